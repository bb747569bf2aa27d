//! GIC register frames. Offsets from the GICv2 and GICv3 architecture
//! specifications (IHI 0048B, IHI 0069H); `register_structs!` checks the
//! layout at compile time.
#![allow(missing_docs)]

use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};

register_structs! {
    /// Distributor (GICD), both generations. ITARGETSR and SGIR are GICv2
    /// only; IROUTER is GICv3 only (index = INTID, 32..=1019 valid).
    pub GicdRegs {
        (0x0000 => pub ctlr: ReadWrite<u32>),
        (0x0004 => pub typer: ReadOnly<u32>),
        (0x0008 => pub iidr: ReadOnly<u32>),
        (0x000C => _reserved0),
        (0x0080 => pub igroupr: [ReadWrite<u32>; 32]),
        (0x0100 => pub isenabler: [ReadWrite<u32>; 32]),
        (0x0180 => pub icenabler: [ReadWrite<u32>; 32]),
        (0x0200 => pub ispendr: [ReadWrite<u32>; 32]),
        (0x0280 => pub icpendr: [ReadWrite<u32>; 32]),
        (0x0300 => pub isactiver: [ReadWrite<u32>; 32]),
        (0x0380 => pub icactiver: [ReadWrite<u32>; 32]),
        (0x0400 => pub ipriorityr: [ReadWrite<u8>; 1024]),
        (0x0800 => pub itargetsr: [ReadWrite<u8>; 1024]),
        (0x0C00 => pub icfgr: [ReadWrite<u32>; 64]),
        (0x0D00 => _reserved1),
        (0x0F00 => pub sgir: WriteOnly<u32>),
        (0x0F04 => _reserved2),
        (0x6000 => pub irouter: [ReadWrite<u64>; 1020]),
        (0x7FE0 => _reserved3),
        (0x1_0000 => @END),
    }
}

register_structs! {
    /// GICv3 redistributor control frame (RD_base).
    pub GicrRdRegs {
        (0x0000 => pub ctlr: ReadWrite<u32>),
        (0x0004 => pub iidr: ReadOnly<u32>),
        (0x0008 => pub typer: ReadOnly<u64>),
        (0x0010 => pub statusr: ReadWrite<u32>),
        (0x0014 => pub waker: ReadWrite<u32>),
        (0x0018 => _reserved0),
        (0x1_0000 => @END),
    }
}

register_structs! {
    /// GICv3 redistributor SGI/PPI frame (SGI_base).
    pub GicrSgiRegs {
        (0x0000 => _reserved0),
        (0x0080 => pub igroupr0: ReadWrite<u32>),
        (0x0084 => _reserved1),
        (0x0100 => pub isenabler0: ReadWrite<u32>),
        (0x0104 => _reserved2),
        (0x0180 => pub icenabler0: ReadWrite<u32>),
        (0x0184 => _reserved3),
        (0x0200 => pub ispendr0: ReadWrite<u32>),
        (0x0204 => _reserved4),
        (0x0280 => pub icpendr0: ReadWrite<u32>),
        (0x0284 => _reserved5),
        (0x0300 => pub isactiver0: ReadWrite<u32>),
        (0x0304 => _reserved6),
        (0x0380 => pub icactiver0: ReadWrite<u32>),
        (0x0384 => _reserved7),
        (0x0400 => pub ipriorityr: [ReadWrite<u8>; 32]),
        (0x0420 => _reserved8),
        (0x0C00 => pub icfgr: [ReadWrite<u32>; 2]),
        (0x0C08 => _reserved9),
        (0x0D00 => pub igrpmodr0: ReadWrite<u32>),
        (0x0D04 => _reserved10),
        (0x1_0000 => @END),
    }
}

register_structs! {
    /// One GICv3 redistributor: RD_base then SGI_base.
    pub GicrRegs {
        (0x0_0000 => pub rd: GicrRdRegs),
        (0x1_0000 => pub sgi: GicrSgiRegs),
        (0x2_0000 => @END),
    }
}

register_structs! {
    /// GICv2 CPU interface (GICC); GICC_DIR is in the second 4 KiB page.
    pub GiccRegs {
        (0x0000 => pub ctlr: ReadWrite<u32>),
        (0x0004 => pub pmr: ReadWrite<u32>),
        (0x0008 => pub bpr: ReadWrite<u32>),
        (0x000C => pub iar: ReadOnly<u32>),
        (0x0010 => pub eoir: WriteOnly<u32>),
        (0x0014 => pub rpr: ReadOnly<u32>),
        (0x0018 => pub hppir: ReadOnly<u32>),
        (0x001C => _reserved0),
        (0x1000 => pub dir: WriteOnly<u32>),
        (0x1004 => _reserved1),
        (0x2000 => @END),
    }
}

register_structs! {
    /// GICv2 virtual interface control (GICH).
    pub GichRegs {
        (0x0000 => pub hcr: ReadWrite<u32>),
        (0x0004 => pub vtr: ReadOnly<u32>),
        (0x0008 => pub vmcr: ReadWrite<u32>),
        (0x000C => _reserved0),
        (0x0010 => pub misr: ReadOnly<u32>),
        (0x0014 => _reserved1),
        (0x0020 => pub eisr: [ReadOnly<u32>; 2]),
        (0x0028 => _reserved2),
        (0x0030 => pub elrsr: [ReadOnly<u32>; 2]),
        (0x0038 => _reserved3),
        (0x00F0 => pub apr: ReadWrite<u32>),
        (0x00F4 => _reserved4),
        (0x0100 => pub lr: [ReadWrite<u32>; 64]),
        (0x0200 => @END),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn frame_layouts() {
        assert_eq!(size_of::<GicdRegs>(), 0x1_0000);
        assert_eq!(offset_of!(GicdRegs, irouter) + 8 * 32, 0x6100, "IROUTER32");
        assert_eq!(offset_of!(GicdRegs, sgir), 0xF00);
        assert_eq!(size_of::<GicrRegs>(), 0x2_0000);
        assert_eq!(offset_of!(GicrRegs, sgi), 0x1_0000);
        assert_eq!(offset_of!(GiccRegs, dir), 0x1000);
        assert_eq!(offset_of!(GichRegs, lr), 0x100);
        assert_eq!(offset_of!(GichRegs, elrsr), 0x30);
    }
}
