//! Subnets: a prefix of the 64-bit ID space written as 0 to 16 hex digits.

use std::fmt;

/// A subnet of 64-bit IDs: the IDs whose top bits (`mask`) equal `subnet`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    /// The subnet's value, with the bits outside the mask cleared.
    pub subnet: u64,
    /// The top `n` bits set.
    pub mask: u64,
}

/// Why a subnet or a change of subnet is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("invalid subnet '{0}'")]
    Invalid(String),
    #[error("the subnet mask is not byte-aligned")]
    NotByteAligned,
    #[error("the subnet masks differ")]
    MaskMismatch,
    #[error("the ID is not in the subnet")]
    NotInSubnet,
}

impl Subnet {
    /// The universal subnet: matches every ID.
    pub const UNIVERSAL: Subnet = Subnet { subnet: 0, mask: 0 };
    /// The zero subnet: matches only 0.
    pub const ZERO: Subnet = Subnet {
        subnet: 0,
        mask: u64::MAX,
    };

    /// Parses 0 to 16 hex digits.
    pub fn parse(s: &str) -> Result<Subnet, SubnetError> {
        let invalid = || SubnetError::Invalid(s.to_string());
        if s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        if s.is_empty() {
            return Ok(Subnet::UNIVERSAL);
        }
        let n = 4 * s.len() as u32;
        let value = u64::from_str_radix(s, 16).map_err(|_| invalid())?;
        let shift = 64 - n;
        let subnet = if shift == 64 { 0 } else { value << shift };
        if subnet == u64::MAX {
            return Err(invalid());
        }
        let mask = u64::MAX << shift;
        Ok(Subnet { subnet, mask })
    }

    /// Whether the (signed) ID is in this subnet.
    pub fn matches(&self, id: i64) -> bool {
        (id as u64) & self.mask == self.subnet
    }

    /// The number of mask bits.
    pub fn bits(&self) -> u32 {
        self.mask.count_ones()
    }

    /// The topic-exchange binding key that matches this subnet's routing
    /// keys, e.g. `0a.1b.#` for `0a1b`.
    pub fn binding_key(&self) -> Result<String, SubnetError> {
        let bits = self.bits();
        if !bits.is_multiple_of(8) {
            return Err(SubnetError::NotByteAligned);
        }
        let nbytes = (bits / 8) as usize;
        if nbytes == 0 {
            return Ok("#".to_string());
        }
        let bytes = self.subnet.to_be_bytes();
        let mut parts: Vec<String> = bytes[..nbytes].iter().map(|b| format!("{b:02x}")).collect();
        if nbytes < 8 {
            parts.push("#".to_string());
        }
        Ok(parts.join("."))
    }

    /// Moves `id` from subnet `self` to subnet `to` (same mask), keeping
    /// the bits outside the mask.
    pub fn change_subnet(&self, id: i64, to: &Subnet) -> Result<i64, SubnetError> {
        if self.mask != to.mask {
            return Err(SubnetError::MaskMismatch);
        }
        if !self.matches(id) {
            return Err(SubnetError::NotInSubnet);
        }
        Ok((to.subnet | (id as u64 & !self.mask)) as i64)
    }
}

impl fmt::Debug for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subnet({:016x}/{})", self.subnet, self.bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_edge_cases() {
        assert_eq!(Subnet::parse("").unwrap(), Subnet::UNIVERSAL);
        assert_eq!(Subnet::parse("0000000000000000").unwrap(), Subnet::ZERO);
        let s = Subnet::parse("1234abcd").unwrap();
        assert_eq!(s.subnet, 0x1234_abcd_0000_0000);
        assert_eq!(s.mask, 0xffff_ffff_0000_0000);
        let full = Subnet::parse("fffffffffffffffe").unwrap();
        assert_eq!(full.mask, u64::MAX);
        assert!(Subnet::parse("ffffffffffffffff").is_err());
        assert!(Subnet::parse("00000000000000000").is_err());
        assert!(Subnet::parse("zz").is_err());
        assert!(Subnet::parse("+1").is_err());
        assert_eq!(
            Subnet::parse("zz").unwrap_err().to_string(),
            "invalid subnet 'zz'"
        );
        // Three digits: a 12-bit mask.
        assert_eq!(Subnet::parse("abc").unwrap().mask, 0xfff0_0000_0000_0000);
    }

    #[test]
    fn matching() {
        assert!(Subnet::UNIVERSAL.matches(-1));
        assert!(Subnet::ZERO.matches(0));
        assert!(!Subnet::ZERO.matches(1));
        let s = Subnet::parse("1234abcd").unwrap();
        assert!(s.matches(0x1234abcd00000001));
        assert!(!s.matches(0x1234abce00000001));
        let neg = Subnet::parse("ff").unwrap();
        assert!(neg.matches(-1));
        assert!(!neg.matches(1));
    }

    #[test]
    fn binding_keys() {
        assert_eq!(Subnet::parse("0a1b").unwrap().binding_key().unwrap(), "0a.1b.#");
        assert_eq!(Subnet::UNIVERSAL.binding_key().unwrap(), "#");
        assert_eq!(
            Subnet::parse("0102030405060708").unwrap().binding_key().unwrap(),
            "01.02.03.04.05.06.07.08"
        );
        assert_eq!(
            Subnet::parse("abc").unwrap().binding_key(),
            Err(SubnetError::NotByteAligned)
        );
    }

    #[test]
    fn change_of_subnet() {
        let from = Subnet::parse("000008").unwrap();
        let to = Subnet::parse("000001").unwrap();
        assert_eq!(
            from.change_subnet(0x0000080000000001, &to).unwrap(),
            0x0000010000000001
        );
        assert_eq!(
            from.change_subnet(0x0000090000000001, &to),
            Err(SubnetError::NotInSubnet)
        );
        assert_eq!(
            from.change_subnet(0x0000080000000001, &Subnet::parse("0001").unwrap()),
            Err(SubnetError::MaskMismatch)
        );
    }
}
