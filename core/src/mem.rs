//! The memory kind: where bytes live, host or device memory, as one type for every layer:
//! where a receive lands (`chunk`), a region in a `wire::RegionToken`, a plugin
//! registration (`abi::ptr_type`), and the `tcpx` command's spelling. A placement (a kind
//! plus its CUDA device) is the engine's `Memory`.

/// Where bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemKind {
    /// Host memory (NIXL's DRAM).
    Host,
    /// GPU memory (NIXL's VRAM, CUDA's device memory).
    Device,
}

/// [`MemKind::Host`] on the wire: NIXL's `DRAM_SEG`.
const WIRE_HOST: u16 = 0;
/// [`MemKind::Device`] on the wire: NIXL's `VRAM_SEG`.
const WIRE_DEVICE: u16 = 1;

impl MemKind {
    /// `host` or `cuda`, as the `tcpx` command and the logs spell it.
    pub const fn name(self) -> &'static str {
        match self {
            MemKind::Host => "host",
            MemKind::Device => "cuda",
        }
    }

    /// The kind [`MemKind::name`] spells `s` (surrounding blanks ignored).
    pub fn parse(s: &str) -> Option<MemKind> {
        match s.trim() {
            "host" => Some(MemKind::Host),
            "cuda" => Some(MemKind::Device),
            _ => None,
        }
    }

    /// The value a region token carries: NIXL's `nixl_mem_t` (DRAM 0, VRAM 1), so a token
    /// means the same to both ends whatever their build.
    pub const fn to_wire(self) -> u16 {
        match self {
            MemKind::Host => WIRE_HOST,
            MemKind::Device => WIRE_DEVICE,
        }
    }

    /// The kind [`MemKind::to_wire`] writes as `v`; `None` for any other value.
    pub const fn from_wire(v: u16) -> Option<MemKind> {
        match v {
            WIRE_HOST => Some(MemKind::Host),
            WIRE_DEVICE => Some(MemKind::Device),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MemKind;

    const ALL: [MemKind; 2] = [MemKind::Host, MemKind::Device];

    #[test]
    fn wire_values_are_nixls() {
        assert_eq!(MemKind::Host.to_wire(), 0);
        assert_eq!(MemKind::Device.to_wire(), 1);
        for k in ALL {
            assert_eq!(MemKind::from_wire(k.to_wire()), Some(k));
        }
        for v in 2..=u16::MAX {
            assert_eq!(MemKind::from_wire(v), None, "{v}");
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(MemKind::Host.name(), "host");
        assert_eq!(MemKind::Device.name(), "cuda");
        for k in ALL {
            assert_eq!(MemKind::parse(k.name()), Some(k));
        }
        assert_eq!(MemKind::parse(" cuda\t"), Some(MemKind::Device));
        for s in ["", "device", "Host", "CUDA", "vram", "dram", "gpu"] {
            assert_eq!(MemKind::parse(s), None, "{s:?}");
        }
    }
}
