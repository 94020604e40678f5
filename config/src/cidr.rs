//! IP address blocks in CIDR notation, for the trusted proxy list.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;

/// An IPv4 or IPv6 block such as `10.0.0.0/8` or `::1/128`. A bare address
/// is a block of one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct CidrBlock {
    network: IpAddr,
    prefix_len: u8,
}

impl CidrBlock {
    /// Reports whether `ip` lies inside the block. An IPv4-mapped IPv6
    /// address is compared as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix_len)
            }
            _ => false,
        }
    }
}

fn prefix_matches(net: &[u8], ip: &[u8], prefix_len: u8) -> bool {
    let full = usize::from(prefix_len / 8);
    let rest = prefix_len % 8;
    if net[..full] != ip[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (net[full] & mask) == (ip[full] & mask)
}

impl FromStr for CidrBlock {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("invalid IP address {addr:?} in {text:?}; write an address or a block such as 10.0.0.0/8"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix length {p:?} in {text:?}; use 0 to {max}"))?,
        };
        Ok(CidrBlock { network, prefix_len })
    }
}

impl TryFrom<String> for CidrBlock {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for CidrBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_contains_addresses_inside_only() {
        let block: CidrBlock = "10.1.0.0/16".parse().unwrap();
        assert!(block.contains("10.1.200.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()));
    }

    #[test]
    fn bare_address_is_single_host() {
        let block: CidrBlock = "::1".parse().unwrap();
        assert!(block.contains("::1".parse().unwrap()));
        assert!(!block.contains("::2".parse().unwrap()));
    }

    #[test]
    fn odd_prefix_length_masks_partial_byte() {
        let block: CidrBlock = "192.168.0.0/23".parse().unwrap();
        assert!(block.contains("192.168.1.255".parse().unwrap()));
        assert!(!block.contains("192.168.2.0".parse().unwrap()));
    }

    #[test]
    fn malformed_blocks_are_rejected() {
        assert!("10.0.0.0/33".parse::<CidrBlock>().is_err());
        assert!("example.org".parse::<CidrBlock>().is_err());
        assert!("10.0.0.0/x".parse::<CidrBlock>().is_err());
    }
}
