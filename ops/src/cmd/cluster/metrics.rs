//! `GET /metrics` over plain HTTP, a reader of the Prometheus text format, and the partition
//! gauges in it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use keel_broker::metrics::{PARTITION_HIGH_WATERMARK, PARTITION_LOG_END_OFFSET};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::timeout;

/// `GET /metrics` over plain HTTP/1.1; the body, or an error naming the URL.
pub async fn scrape_metrics(addr: SocketAddr, limit: Duration) -> anyhow::Result<String> {
    /// A cap on the body, far above a broker's metrics.
    const MAX_BYTES: u64 = 64 << 20;
    let url = format!("http://{addr}/metrics");
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut bytes = Vec::new();
        stream.take(MAX_BYTES).read_to_end(&mut bytes).await?;
        Ok::<_, std::io::Error>(bytes)
    };
    let bytes = timeout(limit, get)
        .await
        .map_err(|_| anyhow!("{url}: no answer within {limit:?}"))?
        .with_context(|| format!("{url}: request failed"))?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{url}: not an HTTP response"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{url}: {status}");
    }
    Ok(body.to_string())
}

/// LEO and HW of one replica as its node reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaOffsets {
    pub leo: Option<i64>,
    pub hw: Option<i64>,
}

/// (topic, partition) → offsets, from one node's metrics text.
pub type PartitionOffsets = BTreeMap<(String, i32), ReplicaOffsets>;

/// Reads `keel_partition_log_end_offset` and `keel_partition_high_watermark` samples
/// from Prometheus text; other lines are skipped.
pub fn partition_offsets(text: &str) -> PartitionOffsets {
    let mut out = PartitionOffsets::new();
    for sample in text.lines().filter_map(Sample::parse) {
        let is_leo = sample.name == PARTITION_LOG_END_OFFSET;
        if !is_leo && sample.name != PARTITION_HIGH_WATERMARK {
            continue;
        }
        let (Some(topic), Some(partition)) = (sample.label("topic"), sample.label("partition"))
        else {
            continue;
        };
        let Ok(partition) = partition.parse::<i32>() else {
            continue;
        };
        if !sample.value.is_finite() {
            continue;
        }
        let entry = out.entry((topic.to_string(), partition)).or_default();
        // Gauges are f64; offsets below 2^53 are exact.
        let value = Some(sample.value as i64);
        if is_leo {
            entry.leo = value;
        } else {
            entry.hw = value;
        }
    }
    out
}

/// One sample line of the Prometheus text format (0.0.4):
/// `name{k="v",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order of the line; label names are unique.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The sample on `line`; `None` for a comment, a blank line or a line that is not a
    /// well-formed sample (bad metric or label name, unquoted or unterminated label value,
    /// repeated label, value or timestamp not a number, trailing fields).
    pub fn parse(line: &str) -> Option<Sample> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = &line[..name_end];
        let valid_name = name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
        if name.is_empty() || !valid_name {
            return None;
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let (parsed, after) = parse_labels(inner)?;
            labels = parsed;
            rest = after;
        }
        let mut fields = rest.split_whitespace();
        // `f64` parsing also reads `+Inf`, `-Inf` and `NaN`.
        let value = fields.next()?.parse::<f64>().ok()?;
        if let Some(timestamp) = fields.next() {
            timestamp.parse::<i64>().ok()?;
        }
        if fields.next().is_some() {
            return None;
        }
        Some(Sample {
            name: name.to_string(),
            labels,
            value,
        })
    }

    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of a `/metrics` page, read strictly: a line that is neither blank, nor a
/// comment, nor a well-formed sample is an error naming it, and so is a `# TYPE` line
/// without a metric name and a type (Prometheus would reject the page).
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") && words.nth(1).is_none() {
                return Err(format!("line {}: bad TYPE line {line:?}", n + 1));
            }
            continue;
        }
        let sample = Sample::parse(line).ok_or_else(|| format!("line {}: {line:?}", n + 1))?;
        samples.push(sample);
    }
    Ok(samples)
}

/// `k="v",k2="v2"}` → the pairs (escapes `\\`, `\"`, `\n` undone) and the text after `}`;
/// `None` when a name is not a label name, a value is not a quoted string or a name repeats.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels: Vec<(String, String)> = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = s.split_once('=')?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        if labels.iter().any(|(k, _)| k == key) {
            return None;
        }
        labels.push((key.to_string(), value));
        s = &after[1 + end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_gauges() {
        let o = |leo, hw| ReplicaOffsets { leo, hw };
        type Want<'a> = Vec<((&'a str, i32), ReplicaOffsets)>;
        let cases: [(&str, Want<'_>); 5] = [
            ("", vec![]),
            (
                "# HELP keel_partition_log_end_offset Log end offset.\n\
                 # TYPE keel_partition_log_end_offset gauge\n\
                 keel_partition_log_end_offset{topic=\"orders\",partition=\"0\"} 100\n\
                 keel_partition_log_end_offset{topic=\"orders\",partition=\"1\"} 7\n\
                 keel_partition_high_watermark{topic=\"orders\",partition=\"0\"} 98\n\
                 keel_partition_log_start_offset{topic=\"orders\",partition=\"0\"} 5\n\
                 keel_requests_total{api=\"produce\"} 12\n",
                vec![
                    (("orders", 0), o(Some(100), Some(98))),
                    (("orders", 1), o(Some(7), None)),
                ],
            ),
            // Label order and spaces, escapes, a float value, a timestamp.
            (
                "keel_partition_high_watermark{ partition=\"2\", topic=\"a\\\"b,c}\\\\\" } 4.2e1 1700\n",
                vec![(("a\"b,c}\\", 2), o(None, Some(42)))],
            ),
            // A later sample of the same series wins.
            (
                "keel_partition_log_end_offset{topic=\"t\",partition=\"0\"} 1\n\
                 keel_partition_log_end_offset{topic=\"t\",partition=\"0\"} 2\n",
                vec![(("t", 0), o(Some(2), None))],
            ),
            // Unusable lines are skipped, not fatal.
            (
                "keel_partition_log_end_offset{topic=\"t\"} 1\n\
                 keel_partition_log_end_offset{topic=\"t\",partition=\"x\"} 1\n\
                 keel_partition_log_end_offset{topic=\"t\",partition=\"0\"} NaN\n\
                 keel_partition_log_end_offset{topic=\"t\",partition=\"0\" 1\n\
                 keel_partition_log_end_offset{topic=\"t\",partition=\"0\"}\n\
                 keel_partition_log_end_offset{topic=t,partition=\"0\"} 1\n\
                 keel_partition_log_end_offset_total{topic=\"t\",partition=\"0\"} 9\n\
                 garbage\n",
                vec![],
            ),
        ];
        for (text, want) in cases {
            let want: PartitionOffsets = want
                .iter()
                .map(|((t, p), offsets)| ((t.to_string(), *p), *offsets))
                .collect();
            assert_eq!(partition_offsets(text), want, "{text:?}");
        }
    }

    #[test]
    fn exposition_samples() {
        // Comments and blank lines are skipped; spaces in the braces, escapes, special
        // values and a timestamp are read.
        let page = "# HELP keel_requests_total Requests.\n\
                    # TYPE keel_requests_total counter\n\
                    keel_requests_total{ api=\"fetch\", client=\"a\\\"b,c}\\\\\" } 2e3 1700000000\n\
                    \n\
                    keel_wait_seconds_bucket{le=\"+Inf\"} +Inf\n\
                    keel_ratio -0.25\n";
        let sample = |name: &str, labels: &[(&str, &str)], value| Sample {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        };
        assert_eq!(
            parse_exposition(page).unwrap(),
            [
                sample(
                    "keel_requests_total",
                    &[("api", "fetch"), ("client", "a\"b,c}\\")],
                    2000.0
                ),
                sample("keel_wait_seconds_bucket", &[("le", "+Inf")], f64::INFINITY),
                sample("keel_ratio", &[], -0.25),
            ]
        );
        let fetch = Sample::parse("keel_requests_total{api=\"fetch\"} 1").unwrap();
        assert_eq!(fetch.label("api"), Some("fetch"));
        assert_eq!(fetch.label("client"), None);
        assert_eq!(Sample::parse("# TYPE up gauge"), None);
        assert_eq!(Sample::parse("  "), None);

        for bad in [
            "keel_a{topic=\"t\"",
            "keel_a{topic=t} 1",
            "keel_a 1 2 3",
            "keel_a 1 1.5",
            "keel_a one",
            "keel_a",
            "keel_a{topic=\"t\",topic=\"u\"} 1",
            "keel_a{to-pic=\"t\"} 1",
            "9keel 1",
            "# TYPE keel_a",
        ] {
            assert_eq!(Sample::parse(bad), None, "{bad:?}");
            let err = parse_exposition(&format!("up 1\n{bad}\n")).unwrap_err();
            assert!(err.starts_with("line 2: "), "{bad:?}: {err}");
        }
    }

    #[tokio::test]
    async fn scrapes_over_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "404 Not Found"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"GET /metrics HTTP/1.1\r\n"));
                let body = "keel_partition_log_end_offset{topic=\"t\",partition=\"0\"} 3\n";
                let len = body.len();
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\n\r\n{body}");
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let limit = Duration::from_secs(5);
        let text = scrape_metrics(addr, limit).await.unwrap();
        assert_eq!(partition_offsets(&text)[&("t".to_string(), 0)].leo, Some(3));
        let err = scrape_metrics(addr, limit).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("http://{addr}/metrics: HTTP/1.1 404 Not Found")
        );
        server.await.unwrap();
        let err = scrape_metrics(addr, limit).await.unwrap_err();
        assert!(err
            .to_string()
            .starts_with(&format!("http://{addr}/metrics: request failed")));
    }
}
