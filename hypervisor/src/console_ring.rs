//! The console's output queue and the escaping of domain output (pure:
//! host-tested; `console` owns the instance and the UART).
//!
//! Producers append whole lines to a fixed-size ring under a short lock
//! that never waits for the UART; the UART is fed from the ring only as its
//! FIFO has room, from points where no other lock is held. A line that does
//! not fit is dropped whole (a line is never cut, so a later line cannot be
//! glued to half of another), counted, and "N bytes dropped" is queued once
//! there is room again.

/// A byte ring of `N` bytes holding terminal bytes (`\n` already sent as
/// `\r\n`).
pub struct Ring<const N: usize> {
    buf: [u8; N],
    /// Next byte to send.
    tail: usize,
    /// Bytes queued.
    len: usize,
    /// Bytes of lines dropped since the last notice was queued.
    dropped: u64,
}

/// Longest "phv: N bytes dropped" notice.
const NOTICE_MAX: usize = 48;

impl<const N: usize> Default for Ring<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Ring<N> {
    /// A power of two: indices wrap with a mask.
    const SIZE_OK: () = assert!(N.is_power_of_two());

    pub const fn new() -> Self {
        let () = Self::SIZE_OK;
        Self {
            buf: [0; N],
            tail: 0,
            len: 0,
            dropped: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes dropped and not yet reported.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn free(&self) -> usize {
        N - self.len
    }

    fn put(&mut self, b: u8) {
        self.buf[(self.tail + self.len) % N] = b;
        self.len += 1;
    }

    /// Queue a pending drop notice if it fits (before anything newer).
    fn notice(&mut self) {
        if self.dropped == 0 {
            return;
        }
        let mut digits = [0u8; 20];
        let mut n = self.dropped;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let parts: [&[u8]; 3] = [b"phv: WARN  ", &digits[i..], b" bytes dropped\r\n"];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert!(len <= NOTICE_MAX);
        if self.free() < len {
            return;
        }
        for p in parts {
            for &b in p {
                self.put(b);
            }
        }
        self.dropped = 0;
    }

    /// Queue `parts` as one line, all or nothing; a part marked `true` is
    /// a domain's bytes and goes through [`escape`]; `\n` is sent as
    /// `\r\n`. Returns whether it was queued.
    pub fn push_line(&mut self, parts: &[(&[u8], bool)]) -> bool {
        let mut scratch = [0u8; 4];
        let mut need = 0usize;
        for &(p, esc) in parts {
            need += p.len();
            for &b in p {
                // Extra bytes: `\xHH` for 1, `\r\n` for `\n`.
                if esc && !is_plain(b) {
                    need += 3;
                } else if !esc && b == b'\n' {
                    need += 1;
                }
            }
        }
        self.notice();
        // Room for the line, and for a notice after it if it is dropped
        // (the notice must not starve behind a flood of lines that fit).
        let reserve = if self.dropped > 0 { NOTICE_MAX } else { 0 };
        if need + reserve > self.free() {
            self.dropped = self.dropped.saturating_add(need as u64);
            return false;
        }
        for &(p, esc) in parts {
            for &b in p {
                if esc {
                    if is_plain(b) {
                        self.put(b);
                        continue;
                    }
                    let n = escape(b, &mut scratch);
                    for &c in &scratch[..n] {
                        self.put(c);
                    }
                } else {
                    if b == b'\n' {
                        self.put(b'\r');
                    }
                    self.put(b);
                }
            }
        }
        true
    }

    /// Queue bytes as they are.
    #[cfg(test)]
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        self.push_line(&[(bytes, false)])
    }

    /// Start a line written piecewise (formatted text): see [`LineWriter`].
    pub fn writer(&mut self) -> LineWriter<'_, N> {
        self.notice();
        LineWriter {
            start: self.len,
            ring: self,
            overflow: false,
            wanted: 0,
        }
    }

    /// The next byte to send, if any (not removed).
    pub fn peek(&self) -> Option<u8> {
        (self.len > 0).then(|| self.buf[self.tail])
    }

    /// Remove the byte [`peek`](Self::peek) returned.
    pub fn pop(&mut self) {
        self.consume(1);
    }

    /// The next bytes to send, as many as lie contiguous in the buffer.
    pub fn readable(&self) -> &[u8] {
        let end = if self.tail + self.len > N {
            N
        } else {
            self.tail + self.len
        };
        &self.buf[self.tail..end]
    }

    /// Remove the first `n` (at most [`len`](Self::len)) bytes.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.tail = (self.tail + n) % N;
        self.len -= n;
        if self.len == 0 {
            self.tail = 0;
        }
        // Room again: report what was lost, in order.
        if self.dropped > 0 && self.free() >= NOTICE_MAX {
            self.notice();
        }
    }
}

/// A line formatted straight into the ring: if it does not fit, what was
/// written of it is taken back at [`finish`](LineWriter::finish) and the
/// whole line counted as dropped.
pub struct LineWriter<'a, const N: usize> {
    ring: &'a mut Ring<N>,
    /// `ring.len` when the line began.
    start: usize,
    overflow: bool,
    /// Bytes the line needed.
    wanted: usize,
}

impl<const N: usize> LineWriter<'_, N> {
    /// Returns whether the line was queued.
    pub fn finish(self) -> bool {
        if self.overflow {
            self.ring.len = self.start;
            self.ring.dropped = self.ring.dropped.saturating_add(self.wanted as u64);
        }
        !self.overflow
    }
}

impl<const N: usize> core::fmt::Write for LineWriter<'_, N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            let n = if b == b'\n' { 2 } else { 1 };
            self.wanted += n;
            if self.overflow {
                continue;
            }
            let reserve = if self.ring.dropped > 0 { NOTICE_MAX } else { 0 };
            if self.ring.free() < n + reserve {
                self.overflow = true;
                continue;
            }
            if b == b'\n' {
                self.ring.put(b'\r');
            }
            self.ring.put(b);
        }
        Ok(())
    }
}

/// Printable ASCII or tab: shown as it is.
#[inline]
fn is_plain(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b)
}

/// One byte of a domain's console output as the terminal may see it:
/// printable ASCII and tab as they are, anything else (escape sequences,
/// carriage returns, backspaces, bytes >= 0x80 that some terminals take as
/// C1 controls) as `\xHH` text, so a domain cannot move the cursor, erase
/// its `[label] ` prefix or forge a line of another. Returns the length
/// written to `out`.
pub fn escape(b: u8, out: &mut [u8; 4]) -> usize {
    if is_plain(b) {
        out[0] = b;
        return 1;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    *out = [
        b'\\',
        b'x',
        HEX[usize::from(b >> 4)],
        HEX[usize::from(b & 0xf)],
    ];
    4
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;
    use std::vec::Vec;

    fn drain<const N: usize>(r: &mut Ring<N>) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = r.peek() {
            out.push(b);
            r.pop();
        }
        out
    }

    fn escaped(line: &[u8]) -> Vec<u8> {
        let mut r = Ring::<256>::new();
        assert!(r.push_line(&[(b"[g] ", false), (line, true), (b"\n", false)]));
        drain(&mut r)
    }

    #[test]
    fn lines_keep_order_and_get_crlf() {
        let mut r = Ring::<64>::new();
        assert!(r.push_line(&[(b"ab", false), (b"c\n", false)]));
        assert!(r.push(b"d\n"));
        assert_eq!(drain(&mut r), b"abc\r\nd\r\n");
        assert!(r.is_empty());
    }

    #[test]
    fn readable_is_contiguous_and_consume_wraps() {
        let mut r = Ring::<8>::new();
        assert!(r.push(b"123456"));
        r.consume(5);
        assert!(r.push(b"abcde"));
        assert_eq!(r.readable(), b"6ab");
        r.consume(2);
        assert_eq!(r.readable(), b"b");
        r.consume(1);
        assert_eq!(r.readable(), b"cde");
        r.consume(100);
        assert!(r.is_empty() && r.readable().is_empty());
    }

    #[test]
    fn wraps_around() {
        let mut r = Ring::<8>::new();
        for i in 0..20u8 {
            assert!(r.push(&[b'a' + i, b'b' + i, b'c' + i]));
            assert_eq!(drain(&mut r), [b'a' + i, b'b' + i, b'c' + i]);
        }
        // Half drained, then more: the bytes come out in order.
        assert!(r.push(b"12345"));
        r.pop();
        r.pop();
        assert!(r.push(b"678"));
        assert_eq!(drain(&mut r), b"345678");
    }

    #[test]
    fn a_full_ring_drops_whole_lines_and_says_so_later() {
        let mut r = Ring::<128>::new();
        assert!(r.push(&[b'x'; 100]));
        // 30 bytes do not fit: dropped whole, nothing of it queued.
        assert!(!r.push_line(&[(&[b'y'; 29], false), (b"\n", false)]));
        assert_eq!((r.len(), r.dropped()), (100, 31));
        // While the loss is unreported a line must leave room for the notice.
        assert!(!r.push(b"z"));
        assert_eq!(r.dropped(), 32);
        let out = drain(&mut r);
        assert_eq!(&out[..100], &[b'x'; 100][..]);
        assert_eq!(&out[100..], b"phv: WARN  32 bytes dropped\r\n");
        assert_eq!(r.dropped(), 0);
        assert!(r.push(b"ok\n"));
        assert_eq!(drain(&mut r), b"ok\r\n");
    }

    #[test]
    fn notice_comes_before_newer_lines() {
        let mut r = Ring::<128>::new();
        assert!(r.push(&[b'x'; 120]));
        assert!(!r.push(&[b'y'; 20]));
        // Draining 60 bytes makes room; the notice is queued first.
        for _ in 0..60 {
            r.pop();
        }
        assert!(r.push(b"next\n"));
        let out = drain(&mut r);
        assert!(
            out.ends_with(b"xphv: WARN  20 bytes dropped\r\nnext\r\n"),
            "{:?}",
            std::string::String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn formatted_lines_are_all_or_nothing() {
        let mut r = Ring::<32>::new();
        let mut w = r.writer();
        writeln!(w, "phv: {}", 42).unwrap();
        assert!(w.finish());
        let mut w = r.writer();
        let n = 31;
        writeln!(w, "a line of {n} bytes cannot fit").unwrap();
        assert!(!w.finish());
        assert_eq!(r.dropped(), 31);
        assert_eq!(drain(&mut r), b"phv: 42\r\n");
    }

    #[test]
    fn domain_bytes_are_escaped() {
        assert_eq!(escaped(b"hi\tthere"), b"[g] hi\tthere\r\n");
        assert_eq!(escaped(b"\x1b[2K\x1b[1G"), b"[g] \\x1b[2K\\x1b[1G\r\n");
        // A carriage return in the line cannot go back over the prefix.
        assert_eq!(
            escaped(b"x\rphv: system off, status 0"),
            b"[g] x\\x0dphv: system off, status 0\r\n"
        );
        assert_eq!(
            escaped(b"\x08\x7f\x9b\xff\x00"),
            b"[g] \\x08\\x7f\\x9b\\xff\\x00\r\n"
        );
        let mut out = [0; 4];
        for b in 0..=255u8 {
            let n = escape(b, &mut out);
            assert!(
                out[..n]
                    .iter()
                    .all(|&c| c == b'\t' || (0x20..0x7f).contains(&c)),
                "{b:#x}"
            );
        }
    }
}
