//! Argument types shared by the client-side commands: the bootstrap list, acks,
//! compression and `key=value` pairs. Parsers return `String` errors, which clap
//! prints next to the offending flag.

use std::fmt;

use clap::{Args, ValueEnum};

/// Where to find the cluster; flattened into every client-side command.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Brokers to bootstrap from, as a comma-separated list (like Kafka's tools).
    #[arg(
        long = "bootstrap-server",
        value_name = "HOST:PORT[,HOST:PORT...]",
        default_value = "127.0.0.1:9092",
        value_parser = parse_bootstrap
    )]
    pub bootstrap_server: Bootstrap,
}

/// A non-empty list of `host:port` bootstrap addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap(Vec<String>);

impl Bootstrap {
    pub fn servers(&self) -> &[String] {
        &self.0
    }

    /// The form Kafka clients take: `host:port,host:port`.
    pub fn to_config_string(&self) -> String {
        self.0.join(",")
    }
}

/// Displays as `a:1` or `a:1, b:2`, for messages.
impl fmt::Display for Bootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

pub fn parse_bootstrap(s: &str) -> Result<Bootstrap, String> {
    let mut servers = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (host, port) = part
            .rsplit_once(':')
            .ok_or_else(|| format!("'{part}' has no port; expected HOST:PORT"))?;
        if host.is_empty() {
            return Err(format!("'{part}' has no host; expected HOST:PORT"));
        }
        match port.parse::<u16>() {
            Ok(p) if p != 0 => {}
            _ => return Err(format!("'{part}' has an invalid port '{port}'")),
        }
        servers.push(part.to_string());
    }
    if servers.is_empty() {
        return Err("expected at least one HOST:PORT".to_string());
    }
    Ok(Bootstrap(servers))
}

/// `--acks 0|1|all` (`-1` is accepted as Kafka's spelling of `all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcksArg {
    None,
    Leader,
    All,
}

pub fn parse_acks(s: &str) -> Result<AcksArg, String> {
    match s {
        "0" => Ok(AcksArg::None),
        "1" => Ok(AcksArg::Leader),
        "all" | "-1" => Ok(AcksArg::All),
        _ => Err(format!("'{s}' is not one of 0, 1, all")),
    }
}

impl AcksArg {
    pub fn to_client(self) -> keel_client::Acks {
        match self {
            AcksArg::None => keel_client::Acks::None,
            AcksArg::Leader => keel_client::Acks::Leader,
            AcksArg::All => keel_client::Acks::All,
        }
    }
}

impl fmt::Display for AcksArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcksArg::None => "0",
            AcksArg::Leader => "1",
            AcksArg::All => "all",
        })
    }
}

/// `--compression`: the codec of produced record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl CompressionArg {
    pub fn to_client(self) -> keel_client::Compression {
        match self {
            CompressionArg::None => keel_client::Compression::None,
            CompressionArg::Gzip => keel_client::Compression::Gzip,
            CompressionArg::Snappy => keel_client::Compression::Snappy,
            CompressionArg::Lz4 => keel_client::Compression::Lz4,
            CompressionArg::Zstd => keel_client::Compression::Zstd,
        }
    }
}

/// `KEY=VALUE`, as in `--config retention.ms=1000` and `--set log.segment.bytes=1048576`.
/// The value may be empty and may itself contain `=`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("'{s}' has an empty key"));
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_lists() {
        let ok: &[(&str, &[&str])] = &[
            ("127.0.0.1:9092", &["127.0.0.1:9092"]),
            ("a:1,b:2", &["a:1", "b:2"]),
            (" a:1 , b:2 ,", &["a:1", "b:2"]),
            ("[::1]:9092", &["[::1]:9092"]),
            ("localhost:65535", &["localhost:65535"]),
        ];
        for (input, want) in ok {
            let got = parse_bootstrap(input).unwrap();
            assert_eq!(got.servers(), *want, "{input}");
        }
        for bad in [
            "",
            ",",
            "localhost",
            ":9092",
            "a:0",
            "a:x",
            "a:70000",
            "a:1,b",
        ] {
            assert!(parse_bootstrap(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn bootstrap_formats() {
        let b = parse_bootstrap("a:1,b:2").unwrap();
        assert_eq!(b.to_config_string(), "a:1,b:2");
        assert_eq!(b.to_string(), "a:1, b:2");
    }

    #[test]
    fn acks_values() {
        let cases = [
            ("0", Some(AcksArg::None)),
            ("1", Some(AcksArg::Leader)),
            ("all", Some(AcksArg::All)),
            ("-1", Some(AcksArg::All)),
            ("2", None),
            ("ALL", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_acks(input).ok(), want, "{input:?}");
        }
        assert_eq!(AcksArg::All.to_string(), "all");
    }

    #[test]
    fn key_values() {
        let cases = [
            ("a=b", Some(("a", "b"))),
            ("retention.ms=1000", Some(("retention.ms", "1000"))),
            ("k=", Some(("k", ""))),
            ("k=a=b", Some(("k", "a=b"))),
            (" k =v", Some(("k", "v"))),
            ("=v", None),
            ("novalue", None),
        ];
        for (input, want) in cases {
            let got = parse_key_value(input).ok();
            let want = want.map(|(k, v)| (k.to_string(), v.to_string()));
            assert_eq!(got, want, "{input:?}");
        }
    }
}
