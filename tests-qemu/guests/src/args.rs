//! `key=value` bootargs (`test=NAME label=... role=hwdom|guest ...`).

/// A view of a bootargs string.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a>(pub &'a str);

impl<'a> Args<'a> {
    /// The value of the last `key=value` token (later ones override).
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.0
            .split_whitespace()
            .filter_map(|t| t.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .next_back()
    }

    /// `key`, `key=1`, `key=true`, `key=yes` are set; absent or anything else is not.
    pub fn flag(&self, key: &str) -> bool {
        self.0.split_whitespace().any(|t| t == key)
            || matches!(self.get(key), Some("1" | "true" | "yes"))
    }

    /// A number, decimal or `0x` hexadecimal (`_` allowed). `Err` if malformed.
    pub fn number(&self, key: &str) -> Result<Option<u64>, &'a str> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_u64(v).map(Some).ok_or(v),
        }
    }
}

/// Decimal or `0x` hexadecimal, with `_` separators.
pub fn parse_u64(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    let mut v: u64 = 0;
    let mut any = false;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        let d = c.to_digit(radix)?;
        v = v.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
        any = true;
    }
    any.then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_flags_numbers() {
        let a =
            Args("test=hello probe=0x4800_0000 wait_ms=1500 native label=hwdom test=psci bad=0xZ");
        assert_eq!(a.get("test"), Some("psci"));
        assert_eq!(a.get("label"), Some("hwdom"));
        assert_eq!(a.get("nope"), None);
        assert!(a.flag("native"));
        assert!(!a.flag("label"));
        assert_eq!(a.number("probe"), Ok(Some(0x4800_0000)));
        assert_eq!(a.number("wait_ms"), Ok(Some(1500)));
        assert_eq!(a.number("nope"), Ok(None));
        assert_eq!(a.number("bad"), Err("0xZ"));
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_u64("0x"), None);
        assert_eq!(parse_u64("99999999999999999999999"), None);
    }
}
