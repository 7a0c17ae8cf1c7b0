//! Reads pcap and pcapng captures (tcpdump, tshark) and reassembles each TCP connection in both
//! directions: segments are put in sequence order, retransmitted bytes are dropped, and a
//! connection whose SYN is not in the capture is decoded from the first frame magic found.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;

/// A TCP segment with what the reassembler needs.
#[derive(Debug)]
pub struct Segment {
    pub time: Duration,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub syn: bool,
    pub payload: Vec<u8>,
}

/// Reads every TCP segment of a capture, whichever of the two formats it is.
pub fn read_segments(mut input: impl Read) -> Result<Vec<Segment>> {
    let mut data = Vec::new();
    input
        .read_to_end(&mut data)
        .context("reading the capture")?;
    let mut out = Vec::new();
    if data.len() >= 4 && data[0..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(&data[..]).context("reading the pcapng header")?;
        let mut links: Vec<DataLink> = Vec::new();
        while let Some(block) = r.next_block() {
            match block.context("reading a pcapng block")? {
                Block::InterfaceDescription(idb) => links.push(idb.linktype),
                Block::EnhancedPacket(epb) => {
                    let link = links
                        .get(epb.interface_id as usize)
                        .copied()
                        .unwrap_or(DataLink::ETHERNET);
                    if let Some(s) = parse_packet(link, epb.timestamp, &epb.data) {
                        out.push(s);
                    }
                }
                Block::SimplePacket(spb) => {
                    let link = links.first().copied().unwrap_or(DataLink::ETHERNET);
                    if let Some(s) = parse_packet(link, Duration::ZERO, &spb.data) {
                        out.push(s);
                    }
                }
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(&data[..]).context("not a pcap or pcapng capture")?;
        let link = r.header().datalink;
        while let Some(pkt) = r.next_packet() {
            let pkt = pkt.context("reading a pcap packet")?;
            if let Some(s) = parse_packet(link, pkt.timestamp, &pkt.data) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

fn parse_packet(link: DataLink, time: Duration, data: &[u8]) -> Option<Segment> {
    let sliced = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data).ok()?,
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data).ok()?,
        // BSD loopback: a 4-byte address family, then IP.
        DataLink::NULL | DataLink::LOOP => SlicedPacket::from_ip(data.get(4..)?).ok()?,
        // Linux cooked captures (`-i any`): 16- and 20-byte headers, then IP.
        DataLink::LINUX_SLL => SlicedPacket::from_ip(data.get(16..)?).ok()?,
        DataLink::LINUX_SLL2 => SlicedPacket::from_ip(data.get(20..)?).ok()?,
        _ => return None,
    };
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match sliced.net? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        _ => return None,
    };
    let TransportSlice::Tcp(tcp) = sliced.transport? else {
        return None;
    };
    Some(Segment {
        time,
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        payload: tcp.payload().to_vec(),
    })
}

/// In-order delivery of one direction's bytes.
#[derive(Debug, Default)]
pub struct Reassembler {
    next: Option<u32>,
    /// Out-of-order segments by sequence number.
    pending: BTreeMap<u32, Vec<u8>>,
    pub midstream: bool,
}

/// What a segment produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Bytes(Vec<u8>),
    /// Bytes that never arrived (the capture missed them) before the next delivered ones.
    Gap(u64),
}

impl Reassembler {
    /// Takes a segment and returns the bytes that are now in order.
    pub fn push(&mut self, seq: u32, syn: bool, payload: &[u8]) -> Vec<Delivery> {
        let mut seq = seq;
        if syn {
            seq = seq.wrapping_add(1);
            if self.next.is_none() {
                self.next = Some(seq);
            }
        }
        let next = *self.next.get_or_insert_with(|| {
            self.midstream = true;
            seq
        });
        if payload.is_empty() {
            return Vec::new();
        }
        // Drop what was already delivered (retransmissions), keep the new tail.
        let behind = next.wrapping_sub(seq) as i32;
        let (seq, data) = if behind > 0 {
            if behind as usize >= payload.len() {
                return Vec::new();
            }
            (next, &payload[behind as usize..])
        } else {
            (seq, payload)
        };
        let keep = self
            .pending
            .get(&seq)
            .is_none_or(|old| old.len() < data.len());
        if keep {
            self.pending.insert(seq, data.to_vec());
        }
        self.drain()
    }

    fn drain(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        let Some(mut next) = self.next else {
            return out;
        };
        loop {
            // The segment at or closest before `next` (wrapping order is fine within a window).
            let key = self.pending.keys().copied().find(|k| {
                (next.wrapping_sub(*k) as i32) >= 0
                    && self.pending[k].len() as u32 > next.wrapping_sub(*k)
            });
            match key {
                Some(k) => {
                    let data = self.pending.remove(&k).unwrap_or_default();
                    let skip = next.wrapping_sub(k) as usize;
                    next = next.wrapping_add((data.len() - skip) as u32);
                    out.push(Delivery::Bytes(data[skip..].to_vec()));
                }
                None => {
                    self.pending.retain(|k, v| {
                        // Entirely old segments can go.
                        (next.wrapping_sub(*k) as i32) < 0 || v.len() as u32 > next.wrapping_sub(*k)
                    });
                    break;
                }
            }
        }
        self.next = Some(next);
        out
    }

    /// At the end of the capture: deliver what is left after holes, marking each hole.
    pub fn flush(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Some((&k, _)) = self.pending.iter().next() {
            let Some(next) = self.next else { break };
            let lost = k.wrapping_sub(next) as i32;
            if lost > 0 {
                out.push(Delivery::Gap(lost as u64));
                self.next = Some(k);
            }
            let before = self.pending.len();
            out.extend(self.drain());
            if self.pending.len() == before {
                // Could not progress (overlap weirdness): drop the first segment.
                self.pending.remove(&k);
            }
        }
        out
    }
}

/// A connection key independent of direction.
pub fn conn_key(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Orders segments per connection and direction; used by `main` to drive stream decoders.
#[derive(Debug, Default)]
pub struct Connections {
    pub by_key: HashMap<(SocketAddr, SocketAddr), usize>,
    /// Per connection: (client, server) once known.
    pub ends: Vec<(SocketAddr, SocketAddr)>,
}

impl Connections {
    /// Connection number (1-based) and whether `src` is the client.
    pub fn lookup(&mut self, s: &Segment) -> (usize, bool) {
        let key = conn_key(s.src, s.dst);
        let n = *self.by_key.entry(key).or_insert_with(|| {
            // The side that sends a bare SYN is the client; without one, the side talking to
            // the lower (well-known) port is.
            let client_is_src = s.syn || s.dst.port() < s.src.port();
            self.ends.push(if client_is_src {
                (s.src, s.dst)
            } else {
                (s.dst, s.src)
            });
            self.ends.len()
        });
        (n, self.ends[n - 1].0 == s.src)
    }
}

/// Fails clearly on an empty capture, which is usually a wrong file.
pub fn ensure_tcp(segments: &[Segment]) -> Result<()> {
    if segments.is_empty() {
        bail!("the capture holds no TCP segments");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(d: Vec<Delivery>) -> Vec<u8> {
        d.into_iter()
            .flat_map(|x| match x {
                Delivery::Bytes(b) => b,
                Delivery::Gap(_) => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn reorders_and_drops_retransmissions() {
        let mut r = Reassembler::default();
        assert!(r.push(1000, true, b"").is_empty());
        let mut got = Vec::new();
        got.extend(bytes(r.push(1006, false, b"world")));
        got.extend(bytes(r.push(1001, false, b"hello")));
        got.extend(bytes(r.push(1001, false, b"hello")));
        got.extend(bytes(r.push(1004, false, b"loworld!")));
        assert_eq!(got, b"helloworld!");
        assert!(!r.midstream);
    }

    #[test]
    fn wraps_around_the_sequence_space() {
        let mut r = Reassembler::default();
        let start = u32::MAX - 2;
        let mut got = bytes(r.push(start, false, b"abc"));
        got.extend(bytes(r.push(start.wrapping_add(3), false, b"def")));
        assert_eq!(got, b"abcdef");
        assert!(r.midstream);
    }

    #[test]
    fn flush_reports_holes() {
        let mut r = Reassembler::default();
        r.push(0, true, b"");
        assert_eq!(bytes(r.push(1, false, b"ab")), b"ab");
        assert!(r.push(10, false, b"zz").is_empty());
        let rest = r.flush();
        assert_eq!(
            rest,
            vec![Delivery::Gap(7), Delivery::Bytes(b"zz".to_vec())]
        );
    }
}
