//! Parking: an idle native connection gives up its task and waits in its core's epoll set.
//!
//! A connection task costs a few hundred bytes even while it only waits for its socket (the
//! task header and the future keeping the wait). Most connections of an IM node are idle most
//! of the time, so after [`crate::conn::Timers::park_ms`] without traffic a plain native
//! connection stores its state next to its queue ([`crate::server::ConnShared`]), registers
//! its socket here and ends its task. Readiness of the socket, a frame queued for it, a kick
//! or a due timer spawns a task again with the same state.
//!
//! The epoll instance is watched by one task per core through the runtime (a PollAdd on the
//! epoll descriptor under io_uring, a nested registration under the epoll driver), so parked
//! connections cost the core nothing until one of them becomes ready. Registrations are
//! one-shot and removed on every unpark, so an event can only name a parked connection or
//! one whose state was already taken; the latter is ignored.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use rustix::event::{epoll, Timespec};

/// Events taken per `epoll_wait`; the loop drains until fewer come back.
const BATCH: usize = 256;

/// One core's epoll set of parked connections.
#[derive(Debug)]
pub struct Parking {
    ep: OwnedFd,
}

impl Parking {
    pub fn new() -> io::Result<Parking> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        Ok(Parking { ep })
    }

    /// A second descriptor of the epoll instance, for the runtime to wait on (the runtime
    /// owns and closes what it is given).
    pub fn watch_fd(&self) -> io::Result<OwnedFd> {
        self.ep.try_clone()
    }

    /// Registers connection `id`'s socket for one readable (or hung-up) event.
    pub fn add(&self, fd: RawFd, id: u32) -> io::Result<()> {
        let fd = borrow(fd);
        epoll::add(
            &self.ep,
            fd,
            epoll::EventData::new_u64(u64::from(id)),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT,
        )?;
        Ok(())
    }

    /// Removes a socket registered with [`Parking::add`]. A socket that is not registered is
    /// not an error: removal is part of every unpark, whatever woke the connection.
    pub fn remove(&self, fd: RawFd) {
        let _ = epoll::delete(&self.ep, borrow(fd));
    }

    /// The ids of the connections whose sockets became ready, without waiting.
    pub fn ready(&self, out: &mut Vec<u32>) -> io::Result<()> {
        let none = epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(0),
        };
        let mut events = [none; BATCH];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            let n = epoll::wait(&self.ep, &mut events, Some(&now))?;
            // Ids are u32 by construction (see `add`).
            out.extend(events[..n].iter().map(|e| {
                let data = e.data;
                data.u64() as u32
            }));
            if n < BATCH {
                return Ok(());
            }
        }
    }
}

/// A connection's socket as a borrowed descriptor.
fn borrow<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: every caller passes the descriptor of a socket that its connection owns and keeps
    // open for the whole call (the connection is either running the call or parked with its
    // socket in its state); the borrow does not outlive the call. monoio's TcpStream exposes
    // only `AsRawFd`, hence the raw descriptor.
    #[allow(unsafe_code)]
    unsafe {
        BorrowedFd::borrow_raw(fd)
    }
}

impl AsFd for Parking {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ep.as_fd()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_parked_socket_is_reported_once_when_readable() {
        let p = Parking::new().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        p.add(s.as_raw_fd(), 7).unwrap();
        let mut ids = Vec::new();
        p.ready(&mut ids).unwrap();
        assert!(ids.is_empty(), "nothing to read yet");
        c.write_all(b"x").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        p.ready(&mut ids).unwrap();
        assert_eq!(ids, vec![7]);
        ids.clear();
        p.ready(&mut ids).unwrap();
        assert!(ids.is_empty(), "one-shot");
        p.remove(s.as_raw_fd());
        p.remove(s.as_raw_fd());
        p.add(s.as_raw_fd(), 8).unwrap();
        p.ready(&mut ids).unwrap();
        assert_eq!(ids, vec![8], "registered again, still readable");
    }
}
