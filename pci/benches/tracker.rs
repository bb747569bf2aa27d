//! Tracker benchmark: report + validate + units for 65,536 functions on one
//! segment, and 131,072 over two; memory per tracked function.
//!
//! Run: `cargo bench -p pci --features sim --bench tracker [-- --runs=N]`.
//!
//! Fabric per segment: 255 root ports (multi-function slots; every fourth
//! without ACS) and one RCiEP on the root bus; below each root port an
//! SR-IOV PF with 255 VFs. 256 + 255 * 256 = 65,536 functions.
//!
//! Times are the best of N runs, as thread CPU time (what one core spends;
//! robust when the machine is shared) and as wall time. The two sizes run
//! interleaved so both see the same machine conditions.

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

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

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

struct Case {
    fabric: Fabric,
    bdfs: Vec<Bdf>,
    hbs: Vec<HostBridge>,
    best_cpu: Duration,
    best_wall: Duration,
    units: usize,
    bytes: isize,
}

impl Case {
    fn new(segments: u16, reverse: bool) -> Self {
        let mut fabric = Fabric::new();
        let children = segment_children();
        let mut hbs = Vec::new();
        for s in 0..segments {
            fabric.add_root_complex(s, 0, &children);
            hbs.push(HostBridge {
                segment: s,
                bus_start: 0,
                bus_end: 255,
            });
        }
        let mut bdfs = fabric.enumerate();
        if reverse {
            bdfs.reverse();
        }
        Self {
            fabric,
            bdfs,
            hbs,
            best_cpu: Duration::MAX,
            best_wall: Duration::MAX,
            units: 0,
            bytes: 0,
        }
    }

    /// One run: fresh tracker, every report, then the units.
    fn run(&mut self) {
        let before = LIVE.load(Ordering::Relaxed);
        let (wall, cpu) = (Instant::now(), thread_cpu_time());
        let mut t = Topology::new(TopologyConfig::new(&self.hbs));
        for &b in &self.bdfs {
            t.report_add(b, &mut self.fabric).expect("valid report");
        }
        let reported = thread_cpu_time();
        let units = t.units().len();
        if std::env::var_os("PCI_BENCH_SPLIT").is_some() {
            eprintln!(
                "    {} functions: reports {:.2} ms CPU, unit table {:.2} ms CPU",
                self.bdfs.len(),
                ms(reported - cpu),
                ms(thread_cpu_time() - reported)
            );
        }
        let (cpu, wall) = (thread_cpu_time() - cpu, wall.elapsed());
        self.bytes = LIVE.load(Ordering::Relaxed) - before;
        assert_eq!(t.len(), self.bdfs.len());
        drop(t);
        self.units = units;
        self.best_cpu = self.best_cpu.min(cpu);
        self.best_wall = self.best_wall.min(wall);
    }

    fn per_fn(&self) -> f64 {
        self.bytes as f64 / self.bdfs.len() as f64
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let runs = std::env::args()
        .skip(1)
        .find_map(|a| a.strip_prefix("--runs=").and_then(|n| n.parse().ok()))
        .unwrap_or(9);

    let mut one = Case::new(1, false);
    let mut two = Case::new(2, false);
    let mut rev = Case::new(1, true);
    assert_eq!(one.bdfs.len(), 65_536);
    assert_eq!(two.bdfs.len(), 131_072);
    for _ in 0..runs {
        one.run();
        two.run();
        rev.run();
    }

    println!(
        "pci tracker benchmark: report + validate + units, best of {runs} (thread CPU time / wall time)"
    );
    println!(
        "  65,536 functions, 1 segment:   {:7.2} ms CPU / {:7.2} ms wall  ({} units)  target < 50 ms",
        ms(one.best_cpu),
        ms(one.best_wall),
        one.units
    );
    println!(
        "  131,072 functions, 2 segments: {:7.2} ms CPU / {:7.2} ms wall  ({} units)",
        ms(two.best_cpu),
        ms(two.best_wall),
        two.units
    );
    println!(
        "  ratio 131,072 / 65,536:        {:7.2} CPU    / {:7.2} wall     target <= 2.2",
        two.best_cpu.as_secs_f64() / one.best_cpu.as_secs_f64(),
        two.best_wall.as_secs_f64() / one.best_wall.as_secs_f64()
    );
    println!(
        "  65,536 functions, reverse order (all orphans until the root ports): {:7.2} ms CPU / {:7.2} ms wall",
        ms(rev.best_cpu),
        ms(rev.best_wall)
    );
    println!(
        "  memory per tracked function:   {:7.1} B (2 segments: {:.1} B)  target <= 256 B",
        one.per_fn(),
        two.per_fn()
    );
}
