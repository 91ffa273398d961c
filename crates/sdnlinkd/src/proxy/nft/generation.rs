//! The nf_tables generation counter of a network namespace (`NFT_MSG_GETGEN`).
//!
//! The kernel bumps the counter once per committed nf_tables transaction in the namespace
//! (`nf_tables_commit` increments `base_seq`; an aborted batch does not), whoever sent it: an
//! `nft -f` of ours, an `nft delete element` by hand, another program's table. Reading ruleset
//! contents or the datapath filling a dynamic set (`update @set`) does not change it. So when
//! the generation still equals the one right after our last verified state, no object of any
//! table has changed since: the kernel still holds exactly what we verified, and a full resync
//! can compare against that state instead of listing the table again.
//!
//! One request and one answer of a few bytes; no crate covers nf_tables messages, and this is
//! the only one needed.

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::io;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NFNETLINK_V0: u8 = 0;
const AF_UNSPEC: u8 = 0;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// The request: `nlmsghdr` + `nfgenmsg`, no attributes.
fn request(seq: u32) -> [u8; NLMSG_HDRLEN + NFGENMSG_LEN] {
    let mut b = [0u8; NLMSG_HDRLEN + NFGENMSG_LEN];
    let len = u32::try_from(b.len()).expect("20 bytes fit in u32");
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    b[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nfgenmsg: family, version, res_id (big endian, 0).
    b[16] = AF_UNSPEC;
    b[17] = NFNETLINK_V0;
    b
}

/// Parses the answer to [`request`]: the generation id, or the kernel's error.
fn parse_answer(buf: &[u8], seq: u32) -> io::Result<Option<u32>> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("NFT_MSG_NEWGEN: {what}"),
        )
    };
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let h = &buf[off..];
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return Err(bad("truncated message"));
        }
        let ty = u16::from_ne_bytes([h[4], h[5]]);
        let mseq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
        let msg = &h[..len];
        off += (len + 3) & !3;
        if mseq != seq {
            continue;
        }
        if ty == NLMSG_ERROR {
            let code = msg
                .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
                .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .ok_or_else(|| bad("truncated error"))?;
            if code == 0 {
                continue;
            }
            return Err(io::Error::from_raw_os_error(-code));
        }
        if ty != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
            continue;
        }
        let mut a = NLMSG_HDRLEN + NFGENMSG_LEN;
        while a + 4 <= msg.len() {
            let alen = usize::from(u16::from_ne_bytes([msg[a], msg[a + 1]]));
            let aty = u16::from_ne_bytes([msg[a + 2], msg[a + 3]]) & 0x3fff;
            if alen < 4 || a + alen > msg.len() {
                return Err(bad("truncated attribute"));
            }
            if aty == NFTA_GEN_ID && alen == 8 {
                let v = &msg[a + 4..a + 8];
                // Attributes of nfnetlink are in network byte order.
                return Ok(Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]])));
            }
            a += (alen + 3) & !3;
        }
        return Err(bad("no NFTA_GEN_ID"));
    }
    Ok(None)
}

/// The current nf_tables generation of the calling thread's network namespace.
pub fn current() -> io::Result<u32> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let seq = 1;
    sock.send(&request(seq), 0)?;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        buf.clear();
        match sock.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if let Some(id) = parse_answer(&buf, seq)? {
            return Ok(id);
        }
    }
}

/// The generation after `g` (the kernel skips 0 when the counter wraps).
pub fn next(g: u32) -> u32 {
    match g.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        let r = request(7);
        assert_eq!(&r[0..4], &20u32.to_ne_bytes());
        assert_eq!(&r[4..6], &0x0a10u16.to_ne_bytes());
        assert_eq!(&r[6..8], &1u16.to_ne_bytes());
        assert_eq!(&r[8..12], &7u32.to_ne_bytes());
        assert_eq!(&r[16..20], &[0, 0, 0, 0]);
    }

    fn answer(seq: u32, attrs: &[u8]) -> Vec<u8> {
        let len = u32::try_from(NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len()).expect("small");
        let mut b = Vec::new();
        b.extend_from_slice(&len.to_ne_bytes());
        b.extend_from_slice(&0x0a0fu16.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&[0, 0, 0, 42]);
        b.extend_from_slice(attrs);
        b
    }

    #[test]
    fn answer_gives_the_generation_in_network_order() {
        let mut attrs = Vec::new();
        // NFTA_GEN_PROC_PID first, then NFTA_GEN_ID.
        attrs.extend_from_slice(&8u16.to_ne_bytes());
        attrs.extend_from_slice(&2u16.to_ne_bytes());
        attrs.extend_from_slice(&[0, 0, 1, 0]);
        attrs.extend_from_slice(&8u16.to_ne_bytes());
        attrs.extend_from_slice(&1u16.to_ne_bytes());
        attrs.extend_from_slice(&[0, 0, 1, 2]);
        assert_eq!(
            parse_answer(&answer(3, &attrs), 3).expect("valid"),
            Some(258)
        );
        assert_eq!(
            parse_answer(&answer(4, &attrs), 3).expect("other seq"),
            None
        );
        assert!(parse_answer(&answer(3, &[]), 3).is_err(), "no id");
        assert!(
            parse_answer(&answer(3, &attrs)[..30], 3).is_err(),
            "truncated"
        );
    }

    #[test]
    fn error_answer_is_the_kernel_errno() {
        let mut b = Vec::new();
        b.extend_from_slice(&36u32.to_ne_bytes());
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&5u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(-1i32).to_ne_bytes());
        b.extend_from_slice(&[0u8; 16]);
        let e = parse_answer(&b, 5).expect_err("EPERM");
        assert_eq!(e.raw_os_error(), Some(1));
    }

    #[test]
    fn next_skips_zero() {
        assert_eq!(next(5), 6);
        assert_eq!(next(u32::MAX), 1);
    }
}
