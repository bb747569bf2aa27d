//! The hypervisor's heap: a buddy allocator over a region in .bss.
//!
//! The heap serves boot-time structures (platform description, VM
//! descriptions, page tables, guest device trees). The trap path allocates
//! nothing.

use buddy_system_allocator::LockedHeap;

/// Size of the heap.
pub const HEAP_SIZE: usize = 16 * 1024 * 1024;

#[repr(C, align(4096))]
struct HeapSpace([u8; HEAP_SIZE]);

#[unsafe(link_section = ".bss.noinit")]
static mut HEAP_SPACE: HeapSpace = HeapSpace([0; HEAP_SIZE]);

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Hand the .bss heap region to the allocator. Called once by the boot CPU.
pub fn init() {
    let start = core::ptr::addr_of_mut!(HEAP_SPACE) as usize;
    // SAFETY: HEAP_SPACE is used for nothing else and is handed over once.
    unsafe { HEAP.lock().init(start, HEAP_SIZE) };
}

/// Bytes in use / total, for the boot report.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.stats_alloc_actual(), heap.stats_total_bytes())
}
