//! A per-core pool of I/O buffers. Connections borrow one only while they read or write and give
//! it back as soon as the bytes are consumed, so an idle connection holds no buffer: memory for
//! reads scales with the connections that are busy at one moment, not with those that are open.

use std::cell::{Cell, RefCell};

/// Buffers of one core. Not `Sync`: each core has its own, so taking one is a `Vec` pop.
#[derive(Debug)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
    buf_size: usize,
    max_free: usize,
    lent: Cell<usize>,
}

impl BufPool {
    /// A pool of buffers of `buf_size` bytes keeping at most `max_free` idle ones.
    pub fn new(buf_size: usize, max_free: usize) -> BufPool {
        BufPool {
            free: RefCell::new(Vec::new()),
            buf_size,
            max_free,
            lent: Cell::new(0),
        }
    }

    /// An empty buffer with at least `buf_size` bytes of capacity.
    pub fn take(&self) -> Vec<u8> {
        self.lent.set(self.lent.get() + 1);
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.buf_size))
    }

    /// Returns a buffer. Buffers grown for a large frame are dropped rather than kept, so the
    /// pool's memory stays `max_free × buf_size`.
    pub fn put(&self, mut buf: Vec<u8>) {
        self.lent.set(self.lent.get().saturating_sub(1));
        let mut free = self.free.borrow_mut();
        if buf.capacity() <= self.buf_size * 2 && free.len() < self.max_free {
            buf.clear();
            free.push(buf);
        }
    }

    /// Buffers currently out of the pool.
    pub fn lent(&self) -> usize {
        self.lent.get()
    }

    /// Size of a fresh buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_big_ones_dropped() {
        let p = BufPool::new(1024, 2);
        let mut a = p.take();
        a.extend_from_slice(b"xyz");
        let ptr = a.as_ptr();
        assert_eq!(p.lent(), 1);
        p.put(a);
        assert_eq!(p.lent(), 0);
        let b = p.take();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr);
        let mut big = p.take();
        big.reserve(10_000);
        p.put(big);
        p.put(b);
        assert_eq!(p.free.borrow().len(), 1);
    }
}
