//! The client address used for rate limits.

use std::net::IpAddr;

use otpgate_config::CidrBlock;

/// Returns the client address: the TCP peer, unless the peer is a trusted
/// proxy, in which case the rightmost address of `X-Forwarded-For` that is
/// not itself a trusted proxy. Values a client can invent (anything left of
/// the last untrusted hop) are never used.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[CidrBlock]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|block| block.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops = forwarded_for.iter().flat_map(|header| header.split(',')).map(str::trim);
    let mut client = peer;
    for hop in hops.collect::<Vec<_>>().into_iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => client = ip,
            Ok(ip) => return ip,
            // An unparsable hop ends the chain: the last trusted hop is the client.
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(list: &[&str]) -> Vec<CidrBlock> {
        list.iter().map(|b| b.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_ignores_header() {
        let ip = client_ip("203.0.113.9".parse().unwrap(), &["1.2.3.4"], &blocks(&["10.0.0.0/8"]));
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted() {
        let trusted = blocks(&["10.0.0.0/8"]);
        let ip = client_ip("10.0.0.2".parse().unwrap(), &["6.6.6.6, 198.51.100.7, 10.0.0.5"], &trusted);
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_peer_without_header_is_client() {
        let ip = client_ip("10.0.0.2".parse().unwrap(), &[], &blocks(&["10.0.0.0/8"]));
        assert_eq!(ip, "10.0.0.2".parse::<IpAddr>().unwrap());
    }
}
