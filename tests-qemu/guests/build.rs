fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{dir}/../../linker/image.ld");
    }
    println!("cargo:rerun-if-changed={dir}/../../linker/image.ld");
}
