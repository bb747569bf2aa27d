//! Tracker benchmark: report + validate + units for 65,536 functions on one
//! segment, and 131,072 over two; memory per tracked function.
//!
//! Run: `cargo bench -p pci --features sim --bench tracker`.
//!
//! Fabric per segment: 255 root ports (multi-function slots; every fourth
//! without ACS) and one RCiEP on the root bus; below each root port an
//! SR-IOV PF with 255 VFs. 256 + 255 * 256 = 65,536 functions.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use pci::sim::{Fabric, Spec, devfn};
use pci::{Bdf, HostBridge, Topology, TopologyConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn segment_children() -> Vec<(u8, Spec)> {
    let pf = Spec::endpoint(0x8086, 0x1521).sriov(255, 0x1520);
    let mut v: Vec<(u8, Spec)> = (0..255u8)
        .map(|i| {
            let rp = Spec::qemu_root_port().child(0, 0, pf.clone());
            (i, if i % 4 == 0 { rp.acs(None) } else { rp })
        })
        .collect();
    v.push((devfn(31, 7), Spec::rciep(0x1234, 1)));
    v
}

fn build(segments: u16) -> (Fabric, Vec<Bdf>, Vec<HostBridge>) {
    let mut f = Fabric::new();
    let children = segment_children();
    let mut hbs = Vec::new();
    for s in 0..segments {
        f.add_root_complex(s, 0, &children);
        hbs.push(HostBridge {
            segment: s,
            bus_start: 0,
            bus_end: 255,
        });
    }
    let bdfs = f.enumerate();
    (f, bdfs, hbs)
}

/// One run: fresh tracker, every report, units. Returns time, units, live bytes.
fn run(f: &mut Fabric, bdfs: &[Bdf], hbs: &[HostBridge]) -> (Duration, usize, isize, Topology) {
    let before = LIVE.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut t = Topology::new(TopologyConfig::new(hbs));
    for &b in bdfs {
        t.report_add(b, f).expect("valid report");
    }
    let reported = start.elapsed();
    let units = t.units().len();
    if std::env::var_os("PCI_BENCH_SPLIT").is_some() {
        eprintln!(
            "    reports {:.2} ms, units {:.2} ms",
            reported.as_secs_f64() * 1e3,
            (start.elapsed() - reported).as_secs_f64() * 1e3
        );
    }
    let elapsed = start.elapsed();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    (elapsed, units, bytes, t)
}

fn best_of(n: usize, f: &mut Fabric, bdfs: &[Bdf], hbs: &[HostBridge]) -> (Duration, usize, isize) {
    let mut best = Duration::MAX;
    let mut units = 0;
    let mut bytes = 0;
    for _ in 0..n {
        let (d, u, b, t) = run(f, bdfs, hbs);
        assert_eq!(t.len(), bdfs.len());
        drop(t);
        if d < best {
            best = d;
        }
        units = u;
        bytes = b;
    }
    (best, units, bytes)
}

fn main() {
    let runs = std::env::args()
        .skip(1)
        .find_map(|a| a.strip_prefix("--runs=").and_then(|n| n.parse().ok()))
        .unwrap_or(7);

    let (mut f1, bdfs1, hbs1) = build(1);
    assert_eq!(bdfs1.len(), 65_536);
    let (t1, units1, bytes1) = best_of(runs, &mut f1, &bdfs1, &hbs1);
    drop(f1);

    let (mut f2, bdfs2, hbs2) = build(2);
    assert_eq!(bdfs2.len(), 131_072);
    let (t2, units2, bytes2) = best_of(runs, &mut f2, &bdfs2, &hbs2);

    // Reports in reverse order: every function an orphan until its parent arrives.
    let mut rev = bdfs1.clone();
    rev.reverse();
    let (mut f3, _, _) = build(1);
    let (t3, _, _) = best_of(runs.min(3), &mut f3, &rev, &hbs1);

    let ratio = t2.as_secs_f64() / t1.as_secs_f64();
    let per_fn = bytes1 as f64 / bdfs1.len() as f64;
    let per_fn2 = bytes2 as f64 / bdfs2.len() as f64;
    println!("pci tracker benchmark (report + validate + units, best of {runs})");
    println!(
        "  65,536 functions, 1 segment:   {:8.2} ms  ({} units)  target < 50 ms",
        t1.as_secs_f64() * 1e3,
        units1
    );
    println!(
        "  131,072 functions, 2 segments: {:8.2} ms  ({} units)",
        t2.as_secs_f64() * 1e3,
        units2
    );
    println!("  ratio 131,072 / 65,536:        {ratio:8.2}     target <= 2.2");
    println!(
        "  65,536 functions, reverse report order: {:8.2} ms",
        t3.as_secs_f64() * 1e3
    );
    println!(
        "  memory per tracked function:   {per_fn:8.1} B  (2 segments: {per_fn2:.1} B)  target <= 256 B"
    );
}
