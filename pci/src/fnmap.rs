//! An ordered map from [`Bdf`] to tracked functions, specialised for PCI
//! addresses: per segment, 256 buses, each a small sorted list of devfns
//! pointing into a dense slab. Lookups are O(log 256); iteration over a bus
//! range (a bridge's subtree) visits only those buses. About 12 bytes of
//! overhead per function on top of the value.

use alloc::vec::Vec;
use core::ops::RangeInclusive;

use crate::addr::Bdf;

/// A vector in chunks (64, 64, 128, 256, ...: capacity doubles like a
/// `Vec`'s): growing never moves elements, so a large tracker does not pay
/// for reallocation copies.
#[derive(Debug)]
pub(crate) struct SegVec<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for SegVec<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> SegVec<T> {
    const BASE: usize = 64;

    /// (chunk, offset) of an index: chunk 0 holds 0..64, chunk c >= 1 holds
    /// 64 << (c - 1) .. 64 << c.
    fn locate(i: usize) -> (usize, usize) {
        let x = i / Self::BASE;
        if x == 0 {
            return (0, i);
        }
        let c = (usize::BITS - x.leading_zeros()) as usize;
        (c, i - (Self::BASE << (c - 1)))
    }

    fn chunk_capacity(c: usize) -> usize {
        if c == 0 {
            Self::BASE
        } else {
            Self::BASE << (c - 1)
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.chunks.iter().map(|c| c.capacity()).sum()
    }

    pub fn push(&mut self, v: T) {
        let (c, _) = Self::locate(self.len);
        if c == self.chunks.len() {
            self.chunks
                .push(Vec::with_capacity(Self::chunk_capacity(c)));
        }
        if let Some(chunk) = self.chunks.get_mut(c) {
            chunk.push(v);
            self.len += 1;
        }
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        let (c, o) = Self::locate(i);
        self.chunks.get(c)?.get(o)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        if i >= self.len {
            return None;
        }
        let (c, o) = Self::locate(i);
        self.chunks.get_mut(c)?.get_mut(o)
    }

    fn pop(&mut self) -> Option<T> {
        let last = self.chunks.last_mut()?;
        let v = last.pop()?;
        if last.is_empty() {
            self.chunks.pop();
        }
        self.len -= 1;
        Some(v)
    }

    /// Removes element `i`, moving the last one into its place.
    pub fn swap_remove(&mut self, i: usize) -> Option<T> {
        if i >= self.len {
            return None;
        }
        let last = self.pop()?;
        if i == self.len {
            return Some(last);
        }
        self.get_mut(i).map(|slot| core::mem::replace(slot, last))
    }
}

#[derive(Debug)]
struct Segment<V> {
    id: u16,
    /// Per bus: (devfn, slab index) sorted by devfn.
    buses: Vec<Vec<(u8, u32)>>,
    _v: core::marker::PhantomData<V>,
}

#[derive(Debug)]
pub(crate) struct FnMap<V> {
    segs: Vec<Segment<V>>,
    keys: SegVec<Bdf>,
    slab: SegVec<V>,
}

impl<V> Default for FnMap<V> {
    fn default() -> Self {
        Self {
            segs: Vec::new(),
            keys: SegVec::default(),
            slab: SegVec::default(),
        }
    }
}

impl<V> FnMap<V> {
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    fn bus(&self, k: Bdf) -> Option<&Vec<(u8, u32)>> {
        let s = self.segs.binary_search_by_key(&k.segment, |s| s.id).ok()?;
        self.segs[s].buses.get(k.bus as usize)
    }

    /// Slab index of a key: stable until the next removal.
    pub fn index(&self, k: Bdf) -> Option<usize> {
        let bus = self.bus(k)?;
        let i = bus.binary_search_by_key(&k.devfn, |e| e.0).ok()?;
        Some(bus[i].1 as usize)
    }

    pub fn get_indexed(&self, k: Bdf) -> Option<(usize, &V)> {
        let i = self.index(k)?;
        Some((i, self.slab.get(i)?))
    }

    pub fn get(&self, k: &Bdf) -> Option<&V> {
        self.index(*k).and_then(|i| self.slab.get(i))
    }

    pub fn contains_key(&self, k: &Bdf) -> bool {
        self.index(*k).is_some()
    }

    pub fn get_mut(&mut self, k: &Bdf) -> Option<&mut V> {
        let i = self.index(*k)?;
        self.slab.get_mut(i)
    }

    pub fn insert(&mut self, k: Bdf, v: V) -> Option<V> {
        if let Some(i) = self.index(k) {
            return self.slab.get_mut(i).map(|slot| core::mem::replace(slot, v));
        }
        let s = match self.segs.binary_search_by_key(&k.segment, |s| s.id) {
            Ok(s) => s,
            Err(s) => {
                let mut buses = Vec::with_capacity(256);
                buses.resize_with(256, Vec::new);
                self.segs.insert(
                    s,
                    Segment {
                        id: k.segment,
                        buses,
                        _v: core::marker::PhantomData,
                    },
                );
                s
            }
        };
        let idx = self.slab.len() as u32;
        let bus = &mut self.segs[s].buses[k.bus as usize];
        let pos = bus.partition_point(|e| e.0 < k.devfn);
        bus.insert(pos, (k.devfn, idx));
        self.slab.push(v);
        self.keys.push(k);
        None
    }

    pub fn remove(&mut self, k: &Bdf) -> Option<V> {
        let s = self.segs.binary_search_by_key(&k.segment, |s| s.id).ok()?;
        let bus = &mut self.segs[s].buses[k.bus as usize];
        let pos = bus.binary_search_by_key(&k.devfn, |e| e.0).ok()?;
        let idx = bus.remove(pos).1 as usize;
        if bus.is_empty() {
            *bus = Vec::new();
        }
        // Move the slab's last element into the hole and repoint it.
        let last = self.slab.len() - 1;
        if idx != last {
            let moved = *self.keys.get(last)?;
            let ms = self
                .segs
                .binary_search_by_key(&moved.segment, |s| s.id)
                .ok()?;
            let mbus = &mut self.segs[ms].buses[moved.bus as usize];
            if let Ok(p) = mbus.binary_search_by_key(&moved.devfn, |e| e.0) {
                mbus[p].1 = idx as u32;
            }
        }
        self.keys.swap_remove(idx)?;
        self.slab.swap_remove(idx)
    }

    fn iter_raw(&self, r: RangeInclusive<Bdf>) -> impl Iterator<Item = usize> + '_ {
        let (lo, hi) = (*r.start(), *r.end());
        self.segs
            .iter()
            .filter(move |s| s.id >= lo.segment && s.id <= hi.segment && lo <= hi)
            .flat_map(move |s| {
                let blo = if s.id == lo.segment { lo.bus } else { 0 };
                let bhi = if s.id == hi.segment { hi.bus } else { 255 };
                (blo..=bhi).flat_map(move |b| {
                    let entries = &s.buses[b as usize];
                    let dlo = if (s.id, b) == (lo.segment, lo.bus) {
                        lo.devfn
                    } else {
                        0
                    };
                    let dhi = if (s.id, b) == (hi.segment, hi.bus) {
                        hi.devfn
                    } else {
                        255
                    };
                    let start = entries.partition_point(|e| e.0 < dlo);
                    entries[start..]
                        .iter()
                        .take_while(move |e| e.0 <= dhi)
                        .map(|e| e.1 as usize)
                })
            })
    }

    /// Entries with keys in `r`, in address order.
    pub fn range(&self, r: RangeInclusive<Bdf>) -> impl Iterator<Item = (&Bdf, &V)> + '_ {
        self.iter_raw(r)
            .filter_map(|i| Some((self.keys.get(i)?, self.slab.get(i)?)))
    }

    /// Slab indices of the entries with keys in `r`, in address order.
    pub fn range_indices(&self, r: RangeInclusive<Bdf>) -> impl Iterator<Item = usize> + '_ {
        self.iter_raw(r)
    }

    /// Key and value at a slab index.
    pub fn at(&self, i: usize) -> Option<(Bdf, &V)> {
        Some((*self.keys.get(i)?, self.slab.get(i)?))
    }

    /// Slab indices in address order.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.iter_raw(Bdf::from_key(0)..=Bdf::from_key(u32::MAX))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Bdf, &V)> + '_ {
        self.range(Bdf::from_key(0)..=Bdf::from_key(u32::MAX))
    }

    /// Heap bytes held (for memory accounting).
    #[allow(dead_code)]
    pub fn heap_bytes(&self) -> usize {
        let buses: usize = self
            .segs
            .iter()
            .map(|s| {
                s.buses.capacity() * 24 + s.buses.iter().map(|b| b.capacity() * 8).sum::<usize>()
            })
            .sum();
        buses + self.keys.capacity() * 4 + self.slab.capacity() * core::mem::size_of::<V>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    #[test]
    fn segvec_chunks() {
        assert_eq!(SegVec::<u8>::locate(0), (0, 0));
        assert_eq!(SegVec::<u8>::locate(63), (0, 63));
        assert_eq!(SegVec::<u8>::locate(64), (1, 0));
        assert_eq!(SegVec::<u8>::locate(127), (1, 63));
        assert_eq!(SegVec::<u8>::locate(128), (2, 0));
        assert_eq!(SegVec::<u8>::locate(65535), (10, 32767));
        let mut v = SegVec::default();
        for i in 0..65536u32 {
            v.push(i);
        }
        assert_eq!(v.capacity(), 65536);
        assert_eq!(v.get(40000), Some(&40000));
        assert_eq!(v.swap_remove(5), Some(5));
        assert_eq!(v.get(5), Some(&65535));
        assert_eq!(v.len(), 65535);
    }

    #[test]
    fn matches_btreemap() {
        let mut m = FnMap::default();
        let mut r = BTreeMap::new();
        let mut x: u32 = 12345;
        for step in 0..5000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let k = Bdf::from_key((x >> 8) & 0x0003_ffff);
            if step % 3 == 0 {
                assert_eq!(m.remove(&k), r.remove(&k));
            } else {
                assert_eq!(m.insert(k, step), r.insert(k, step));
            }
        }
        assert_eq!(m.len(), r.len());
        let a: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
        let b: Vec<_> = r.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(a, b);
        let lo = Bdf::new(1, 3, 0, 0);
        let hi = Bdf::new(2, 9, 1, 0);
        let a: Vec<_> = m.range(lo..=hi).map(|(k, _)| *k).collect();
        let b: Vec<_> = r.range(lo..=hi).map(|(k, _)| *k).collect();
        assert_eq!(a, b);
        for (k, v) in &r {
            assert_eq!(m.get(k), Some(v));
        }
    }
}
