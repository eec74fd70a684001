//! Deterministic test records (keys, values, headers) and their text forms for kcat.

/// One record as a test produces it and expects it back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TestRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A tiny deterministic PRNG (xorshift64*), so failures reproduce exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

/// Printable ASCII without tab, newline, comma, `=` and backslash, so the text forms used
/// with kcat (`key<TAB>value`, headers `k=v,k2=v2`) stay unambiguous.
const ALPHABET: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !#$%&()*+-./:;<>?@[]^_{|}~";

/// `n` records with unique keys `<prefix>-<i>`, values of 1..=`max_value` printable bytes, and
/// `headers_per_record` headers (`h0`, `h1`, …) whose values depend on the record.
pub fn generate(
    prefix: &str,
    n: usize,
    max_value: usize,
    headers_per_record: usize,
    seed: u64,
) -> Vec<TestRecord> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let len = rng.range(1, max_value.max(1));
            let value = (0..len)
                .map(|_| ALPHABET[rng.range(0, ALPHABET.len() - 1)])
                .collect();
            let headers = (0..headers_per_record)
                .map(|h| (format!("h{h}"), format!("v{h}-{i}").into_bytes()))
                .collect();
            TestRecord {
                key: format!("{prefix}-{i:06}").into_bytes(),
                value,
                headers,
            }
        })
        .collect()
}

/// `key<TAB>value<NL>` per record: kcat's producer input with `-K '\t'`.
pub fn kcat_input(records: &[TestRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&r.key);
        out.push(b'\t');
        out.extend_from_slice(&r.value);
        out.push(b'\n');
    }
    out
}

/// What `kcat -C -f '%k\t%s\t%h\n'` prints for `records` when every record carries the
/// headers `headers` (kcat prints headers as `k=v` joined by `,`).
pub fn kcat_expected_output(records: &[TestRecord], headers: &[(&str, &str)]) -> Vec<u8> {
    let h = headers
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&r.key);
        out.push(b'\t');
        out.extend_from_slice(&r.value);
        out.push(b'\t');
        out.extend_from_slice(h.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The first line where `got` and `want` differ, for a readable failure.
pub fn first_difference(got: &[u8], want: &[u8]) -> Option<String> {
    let g: Vec<&[u8]> = got.split(|b| *b == b'\n').collect();
    let w: Vec<&[u8]> = want.split(|b| *b == b'\n').collect();
    for i in 0..g.len().max(w.len()) {
        let (a, b) = (g.get(i), w.get(i));
        if a != b {
            let show = |x: Option<&&[u8]>| {
                x.map(|l| String::from_utf8_lossy(l).into_owned())
                    .unwrap_or_else(|| "<missing>".into())
            };
            return Some(format!(
                "line {i} (of {} got, {} wanted): got {:?}, wanted {:?}",
                g.len(),
                w.len(),
                show(a),
                show(b)
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_keys_unique() {
        let a = generate("t", 100, 50, 2, 7);
        assert_eq!(a, generate("t", 100, 50, 2, 7));
        let mut keys: Vec<_> = a.iter().map(|r| r.key.clone()).collect();
        keys.dedup();
        assert_eq!(keys.len(), 100);
        assert!(a.iter().all(|r| !r.value.is_empty() && r.value.len() <= 50));
        assert!(a
            .iter()
            .all(|r| !r.value.iter().any(|b| b"\t\n,=\\".contains(b))));
    }

    #[test]
    fn kcat_forms() {
        let r = vec![TestRecord {
            key: b"k".to_vec(),
            value: b"v v".to_vec(),
            headers: vec![],
        }];
        assert_eq!(kcat_input(&r), b"k\tv v\n");
        assert_eq!(
            kcat_expected_output(&r, &[("a", "1"), ("b", "2")]),
            b"k\tv v\ta=1,b=2\n"
        );
        assert_eq!(first_difference(b"a\nb\n", b"a\nb\n"), None);
        assert!(first_difference(b"a\nc\n", b"a\nb\n")
            .unwrap()
            .starts_with("line 1"));
    }
}
