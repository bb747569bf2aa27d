//! Function addresses and ECAM offset decoding.

use core::fmt;

/// A PCI function address: segment, bus, device (5 bits) and function (3 bits).
///
/// Ordered by (segment, bus, devfn), so the functions of one bus, and of a
/// bus range (a bridge's subtree), are contiguous in any ordered map.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub segment: u16,
    pub bus: u8,
    pub devfn: u8,
}

impl Bdf {
    /// Builds an address; `device` is masked to 5 bits and `function` to 3.
    pub const fn new(segment: u16, bus: u8, device: u8, function: u8) -> Self {
        Self {
            segment,
            bus,
            devfn: ((device & 0x1f) << 3) | (function & 7),
        }
    }

    pub const fn from_devfn(segment: u16, bus: u8, devfn: u8) -> Self {
        Self {
            segment,
            bus,
            devfn,
        }
    }

    pub const fn device(self) -> u8 {
        self.devfn >> 3
    }

    pub const fn function(self) -> u8 {
        self.devfn & 7
    }

    /// The 16-bit requester id (bus << 8 | devfn) used in TLPs and AER.
    pub const fn rid(self) -> u16 {
        ((self.bus as u16) << 8) | self.devfn as u16
    }

    pub const fn from_rid(segment: u16, rid: u16) -> Self {
        Self::from_devfn(segment, (rid >> 8) as u8, rid as u8)
    }

    /// One key for the whole address; same order as `Ord`.
    pub const fn key(self) -> u32 {
        ((self.segment as u32) << 16) | self.rid() as u32
    }

    pub const fn from_key(key: u32) -> Self {
        Self::from_rid((key >> 16) as u16, key as u16)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment,
            self.bus,
            self.device(),
            self.function()
        )
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An ECAM window: config space of buses `bus_start..=bus_end` of one segment,
/// 4 KiB per function, starting at window offset 0 for `bus_start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamWindow {
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

impl EcamWindow {
    /// Size in bytes of the window (1 MiB per bus).
    pub const fn size(&self) -> u64 {
        if self.bus_end < self.bus_start {
            return 0;
        }
        ((self.bus_end - self.bus_start) as u64 + 1) << 20
    }

    /// Decodes a byte offset into the window into (function, register offset).
    /// `None` if the offset is past the window's last bus.
    pub fn decode(&self, offset: u64) -> Option<(Bdf, u16)> {
        if offset >= self.size() {
            return None;
        }
        let bus = self.bus_start as u64 + (offset >> 20);
        let devfn = ((offset >> 12) & 0xff) as u8;
        let reg = (offset & 0xfff) as u16;
        Some((Bdf::from_devfn(self.segment, bus as u8, devfn), reg))
    }

    /// Byte offset into the window of register `reg` of `bdf`, if it is inside.
    pub fn offset_of(&self, bdf: Bdf, reg: u16) -> Option<u64> {
        if bdf.segment != self.segment
            || bdf.bus < self.bus_start
            || bdf.bus > self.bus_end
            || reg > 0xfff
        {
            return None;
        }
        Some((((bdf.bus - self.bus_start) as u64) << 20) | ((bdf.devfn as u64) << 12) | reg as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecam_decode_round_trip() {
        let w = EcamWindow {
            segment: 1,
            bus_start: 0x10,
            bus_end: 0x1f,
        };
        assert_eq!(w.size(), 16 << 20);
        let b = Bdf::new(1, 0x12, 3, 5);
        let off = w.offset_of(b, 0x104).unwrap();
        assert_eq!(off, (2 << 20) | (0x1d << 12) | 0x104);
        assert_eq!(w.decode(off), Some((b, 0x104)));
        assert_eq!(w.decode(16 << 20), None);
        assert_eq!(w.offset_of(Bdf::new(1, 0x20, 0, 0), 0), None);
        assert_eq!(w.offset_of(Bdf::new(0, 0x12, 0, 0), 0), None);
    }

    #[test]
    fn bdf_fields_and_order() {
        let b = Bdf::new(0, 3, 31, 7);
        assert_eq!((b.device(), b.function(), b.rid()), (31, 7, 0x03ff));
        assert_eq!(Bdf::from_key(b.key()), b);
        assert!(Bdf::new(0, 3, 0, 0) < Bdf::new(0, 4, 0, 0));
        assert!(Bdf::new(0, 255, 0, 0) < Bdf::new(1, 0, 0, 0));
        assert_eq!(alloc::format!("{b}"), "0000:03:1f.7");
    }
}
