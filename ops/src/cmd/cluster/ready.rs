//! The line a node prints on stdout once it serves.

use std::net::SocketAddr;

/// `KEEL_READY node=<id> kafka=<addr|none> metrics=<addr|none> controller=<addr|none>`.
///
/// Read tolerantly: fields in any order, unknown fields ignored, a missing address or
/// `none` is `None` (brokers from before cluster mode print no `controller=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine {
    pub node: i32,
    pub kafka: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub controller: Option<SocketAddr>,
}

impl ReadyLine {
    /// `None` when `line` is not a ready line; `Some(Err)` when it is but is malformed.
    pub fn parse(line: &str) -> Option<Result<ReadyLine, String>> {
        let mut fields = line.split_whitespace();
        if fields.next() != Some("KEEL_READY") {
            return None;
        }
        let addr = |key: &str, v: &str| match v {
            "none" => Ok(None),
            v => v
                .parse::<SocketAddr>()
                .map(Some)
                .map_err(|_| format!("ready line {line:?}: {key}={v} is not HOST:PORT")),
        };
        let mut node = None;
        let mut ready = ReadyLine {
            node: -1,
            kafka: None,
            metrics: None,
            controller: None,
        };
        let parsed = fields.try_for_each(|field| {
            match field.split_once('=') {
                Some(("node", v)) => {
                    let id = v.parse::<i32>();
                    node = Some(id.map_err(|_| format!("ready line {line:?}: bad node={v}"))?);
                }
                Some(("kafka", v)) => ready.kafka = addr("kafka", v)?,
                Some(("metrics", v)) => ready.metrics = addr("metrics", v)?,
                Some(("controller", v)) => ready.controller = addr("controller", v)?,
                _ => {}
            }
            Ok(())
        });
        Some(parsed.and_then(|()| {
            ready.node = node.ok_or_else(|| format!("ready line {line:?} has no node="))?;
            Ok(ready)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines() {
        let addr = |s: Option<&str>| s.map(|s| s.parse::<SocketAddr>().unwrap());
        let ready = |node, kafka, metrics, controller| {
            Some(Ok(ReadyLine {
                node,
                kafka: addr(kafka),
                metrics: addr(metrics),
                controller: addr(controller),
            }))
        };
        let (k, m, c) = (
            Some("127.0.0.1:9092"),
            Some("127.0.0.1:9645"),
            Some("127.0.0.1:9091"),
        );
        let cases = [
            (
                "KEEL_READY node=1 kafka=127.0.0.1:9092 metrics=127.0.0.1:9645 controller=none",
                ready(1, k, m, None),
            ),
            (
                "KEEL_READY node=0 kafka=none metrics=none controller=127.0.0.1:9091",
                ready(0, None, None, c),
            ),
            // The standalone broker from before cluster mode prints no controller=.
            (
                "KEEL_READY node=1 kafka=127.0.0.1:9092 metrics=none",
                ready(1, k, None, None),
            ),
            // Any order, unknown fields, extra blanks, a trailing newline.
            (
                "  KEEL_READY  metrics=127.0.0.1:9645 future=x node=7 kafka=127.0.0.1:9092 extra\n",
                ready(7, k, m, None),
            ),
            (
                "KEEL_READY node=2 kafka=[::1]:9092",
                ready(2, Some("[::1]:9092"), None, None),
            ),
            ("KEEL_READY node=2", ready(2, None, None, None)),
            ("starting", None),
            ("", None),
            ("KEEL_READYX node=1", None),
            ("keel_ready node=1", None),
            ("log: KEEL_READY node=1", None),
        ];
        for (line, want) in cases {
            assert_eq!(ReadyLine::parse(line), want, "{line:?}");
        }
        for bad in [
            "KEEL_READY",
            "KEEL_READY kafka=127.0.0.1:1",
            "KEEL_READY node=x kafka=127.0.0.1:1",
            "KEEL_READY node=1 kafka=localhost",
            "KEEL_READY node=1 controller=127.0.0.1",
            "KEEL_READY node=1 metrics=",
        ] {
            assert!(matches!(ReadyLine::parse(bad), Some(Err(_))), "{bad:?}");
        }
    }
}
