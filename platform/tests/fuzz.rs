//! Hostile-input tests: real DTBs truncated and mutated (random bytes, and
//! 32-bit words set to boundary values at aligned offsets, where tokens,
//! lengths, offsets and cell counts live). `from_fdt` must return, Ok or
//! Err, and never panic. Deterministic (fixed xorshift seeds) so a failure
//! reproduces; `PHV_FUZZ_ITERATIONS` raises the count for a longer soak.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::{FdtBuilder, data};
use platform::Platform;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const BOUNDARY_WORDS: [u32; 12] = [
    0,
    1,
    2,
    3,
    4,
    9,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fff0,
    0xffff_fffc,
    0xffff_ffff,
    0xd00d_feed,
];

fn must_not_panic(what: &str, blob: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| Platform::from_fdt(blob))).is_err() {
        let path = std::env::temp_dir().join("phv-platform-fuzz-crash.dtb");
        std::fs::write(&path, blob).unwrap();
        panic!(
            "from_fdt panicked on {what}; blob written to {}",
            path.display()
        );
    }
}

/// The blob cut down to header + blocks (QEMU pads its dumps to 1 MiB), so
/// mutations land on content rather than on padding.
fn compact(blob: &[u8]) -> Vec<u8> {
    let word = |i: usize| u32::from_be_bytes(blob[i * 4..i * 4 + 4].try_into().unwrap()) as usize;
    let end = (word(3) + word(8)).max(word(2) + word(9));
    let mut out = blob[..end].to_vec();
    out[4..8].copy_from_slice(&(end as u32).to_be_bytes());
    out
}

fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let mut corpus = vec![
        ("qemu-virt-gicv3", compact(&data("qemu-virt-gicv3.dtb"))),
        ("qemu-virt-gicv2", compact(&data("qemu-virt-gicv2.dtb"))),
        ("juno-r2", data("boards/juno-r2.dtb")),
        ("imx8mp-evk", data("boards/imx8mp-evk.dtb")),
        (
            "bcm2711-rpi-4-b",
            common::with_memory(
                &data("boards/bcm2711-rpi-4-b.dtb"),
                0x8000_0000,
                0x4000_0000,
            ),
        ),
    ];
    // A tree with VM nodes, so /chosen parsing is mutated too.
    let mut b = FdtBuilder::new();
    b.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .cells("interrupt-parent", &[1]);
    b.begin("memory@40000000")
        .string("device_type", "memory")
        .cells("reg", &[0, 0x4000_0000, 0, 0x4000_0000])
        .end();
    b.begin("cpus")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[0]);
    b.begin("cpu@0")
        .string("device_type", "cpu")
        .cells("reg", &[0])
        .end()
        .end();
    b.begin("intc")
        .strings_prop("compatible", &["arm,gic-v3"])
        .empty("interrupt-controller");
    b.cells("#interrupt-cells", &[3])
        .cells("phandle", &[1])
        .cells(
            "reg",
            &[0, 0x800_0000, 0, 0x1_0000, 0, 0x80a_0000, 0, 0x2_0000],
        )
        .end();
    b.begin("timer")
        .string("compatible", "arm,armv8-timer")
        .cells("interrupts", &[1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4])
        .end();
    b.begin("chosen")
        .begin("vm@0")
        .string("compatible", "phv,vm")
        .empty("phv,hardware-domain");
    b.cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .cells("memory", &[0, 0x400_0000])
        .cells("cpus", &[1]);
    b.begin("module@44000000")
        .strings_prop("compatible", &["multiboot,kernel", "multiboot,module"]);
    b.cells("reg", &[0, 0x4400_0000, 0, 0x10_0000])
        .end()
        .end()
        .end()
        .end();
    corpus.push(("synthetic-vm", b.finish()));
    for (name, blob) in &corpus {
        Platform::from_fdt(blob)
            .unwrap_or_else(|e| panic!("corpus {name} must parse before mutation: {e}"));
    }
    corpus
}

fn iterations() -> usize {
    std::env::var("PHV_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn truncated_blobs_never_panic() {
    for (name, blob) in corpus() {
        // Every length in the header and first structure bytes, then a stride.
        let lengths = (0..256.min(blob.len())).chain((256..blob.len()).step_by(37));
        for len in lengths {
            must_not_panic(&format!("{name} truncated to {len}"), &blob[..len]);
            // Also keep the header's totalsize consistent with the cut,
            // so parsing goes past the header check into the blocks.
            if len >= 8 {
                let mut cut = blob[..len].to_vec();
                cut[4..8].copy_from_slice(&(len as u32).to_be_bytes());
                must_not_panic(
                    &format!("{name} truncated to {len} with totalsize fixed"),
                    &cut,
                );
            }
        }
    }
}

#[test]
fn mutated_blobs_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let corpus = corpus();
    for iteration in 0..iterations() {
        for (name, original) in &corpus {
            let mut blob = original.clone();
            let mutations = 1 + rng.below(4);
            for _ in 0..mutations {
                match rng.below(3) {
                    0 => {
                        let at = rng.below(blob.len());
                        blob[at] = rng.next() as u8;
                    }
                    1 => {
                        let at = rng.below(blob.len() / 4) * 4;
                        let word = BOUNDARY_WORDS[rng.below(BOUNDARY_WORDS.len())];
                        blob[at..at + 4].copy_from_slice(&word.to_be_bytes());
                    }
                    _ => {
                        let at = rng.below(blob.len() / 4) * 4;
                        let word = u32::from_be_bytes(blob[at..at + 4].try_into().unwrap());
                        let nudged = word.wrapping_add(rng.below(9) as u32).wrapping_sub(4);
                        blob[at..at + 4].copy_from_slice(&nudged.to_be_bytes());
                    }
                }
            }
            must_not_panic(&format!("{name} mutation {iteration}"), &blob);
        }
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for len in 0..512 {
        let mut blob: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= 4 {
            blob[..4].copy_from_slice(&0xd00d_feedu32.to_be_bytes());
        }
        must_not_panic(&format!("{len} random bytes"), &blob);
    }
}
