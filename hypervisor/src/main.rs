//! phv: a Type-1 hypervisor for ARM64 whose reason to exist is safe,
//! recoverable PCIe passthrough.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]

extern crate alloc;

#[cfg(target_arch = "aarch64")]
mod arch;
mod console;
mod drivers;
mod guest_fdt;
mod heap;
mod memory;
mod mmio;
mod smccc;
mod vuart;

#[cfg(all(target_arch = "aarch64", not(test)))]
#[unsafe(no_mangle)]
extern "C" fn primary_main(dtb: usize, load_addr: usize) -> ! {
    // SAFETY: smoke test
    unsafe { console::init(0x0900_0000) };
    println!("phv: hello from EL2, loaded at {load_addr:#x}, dtb at {dtb:#x}");
    loop {}
}

#[cfg(all(target_arch = "aarch64", not(test)))]
#[unsafe(no_mangle)]
extern "C" fn secondary_main(_cpu: usize) -> ! {
    loop {}
}

#[cfg(not(test))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("phv: PANIC: {info}");
    loop {}
}
