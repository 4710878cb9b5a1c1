//! (5) The tuning environment (T12), and the engine's own handshake bound (T10).

use std::time::Duration;

use tcpx::engine::config::Config;

use super::{get, Check, Env, Status};

/// TCPX's flow-steering wait before `accept` completes when the env leaves it unset (T10).
pub(super) const DEFAULT_STEERING_WAIT_US: u64 = 5_000_000;
/// Head-room over the flow-steering wait: ~100 ms sleep per socket in connect/accept, for
/// up to 8 data sockets and the control socket (T10).
pub(super) const HANDSHAKE_MARGIN: Duration = Duration::from_millis(1000);

/// A tuning variable: GCP's value, the plugin's value when unset, its accepted range.
struct Tuning {
    env: &'static str,
    recommended: i64,
    unset: i64,
    range: std::ops::RangeInclusive<i64>,
    what: &'static str,
}

const TUNING: [Tuning; 3] = [
    Tuning {
        env: "NCCL_DYNAMIC_CHUNK_SIZE",
        recommended: 524_288,
        unset: 0,
        range: 0..=(i32::MAX as i64 - 1),
        what: "bytes per chunk spread over the sockets",
    },
    Tuning {
        env: "NCCL_NSOCKS_PERTHREAD",
        recommended: 4,
        unset: 1,
        range: 1..=8,
        what: "sockets per helper thread",
    },
    Tuning {
        env: "NCCL_SOCKET_NTHREADS",
        recommended: 1,
        unset: 1,
        range: 1..=16,
        what: "helper threads per comm",
    },
];

pub(super) fn tuning_checks(env: Env<'_>) -> Vec<Check> {
    TUNING
        .iter()
        .map(|t| {
            let fix = format!("export {}={}", t.env, t.recommended);
            match get(env, t.env).map(|v| (v.trim().parse::<i64>().ok(), v)) {
                None if t.unset == t.recommended => Check::new(
                    Status::Ok,
                    t.env,
                    format!(
                        "unset: the plugin uses {}, GCP's value ({})",
                        t.unset, t.what
                    ),
                ),
                None => Check::new(
                    Status::Missing,
                    t.env,
                    format!("unset: the plugin uses {} ({})", t.unset, t.what),
                )
                .fix(fix),
                Some((Some(n), _)) if n == t.recommended => {
                    Check::new(Status::Ok, t.env, format!("{n} ({})", t.what))
                }
                Some((Some(n), _)) if t.range.contains(&n) => Check::new(
                    Status::Warn,
                    t.env,
                    format!("{n}; GCP's A3 setting is {}", t.recommended),
                )
                .fix(fix),
                Some((_, v)) => Check::new(
                    Status::Missing,
                    t.env,
                    format!(
                        "{v:?} is outside {}..={}: the plugin ignores it and uses {}",
                        t.range.start(),
                        t.range.end(),
                        t.unset
                    ),
                )
                .fix(fix),
            }
        })
        .collect()
}

// ---- the engine's own settings: handshake bound (T10) ------------------------------

pub(super) fn engine_check(env: Env<'_>, config: Result<Config, tcpx::error::Error>) -> Check {
    let name = "engine";
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            return Check::new(Status::Missing, name, e.to_string())
                .fix("fix the TCPX_* setting it names")
        }
    };
    const WAIT: &str = "NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS";
    let wait_us = get(env, WAIT)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_STEERING_WAIT_US);
    let need = Duration::from_micros(wait_us) + HANDSHAKE_MARGIN;
    let bound = config.timeout.as_millis();
    if config.timeout < need {
        Check::new(
            Status::Missing,
            name,
            format!(
                "TCPX_TIMEOUT_MS={bound} is shorter than TCPX's accept \
                 (flow-steering wait {} ms + ~100 ms per socket)",
                wait_us / 1000
            ),
        )
        .fix(format!(
            "export TCPX_TIMEOUT_MS={}",
            need.as_millis().max(10_000)
        ))
    } else {
        Check::new(
            Status::Ok,
            name,
            format!(
                "handshake bound {bound} ms allows TCPX's accept (flow-steering wait {} ms)",
                wait_us / 1000
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn lookup(m: &HashMap<String, String>) -> impl Fn(&str) -> Option<String> + '_ {
        move |k| m.get(k).cloned()
    }

    #[test]
    fn tuning_is_missing_unset_warned_off_value_ok_recommended() {
        let m = env(&[
            ("NCCL_DYNAMIC_CHUNK_SIZE", "524288"),
            ("NCCL_NSOCKS_PERTHREAD", "2"),
            ("NCCL_SOCKET_NTHREADS", "99"),
        ]);
        let c = tuning_checks(&lookup(&m));
        let s: Vec<Status> = c.iter().map(|c| c.status).collect();
        assert_eq!(s, [Status::Ok, Status::Warn, Status::Missing], "{c:?}");
        let c = tuning_checks(&lookup(&env(&[])));
        let s: Vec<Status> = c.iter().map(|c| c.status).collect();
        // Unset NCCL_SOCKET_NTHREADS already means GCP's 1.
        assert_eq!(s, [Status::Missing, Status::Missing, Status::Ok], "{c:?}");
        assert_eq!(
            c[0].fix.as_deref(),
            Some("export NCCL_DYNAMIC_CHUNK_SIZE=524288")
        );
    }

    #[test]
    fn the_handshake_bound_must_cover_the_flow_steering_wait() {
        let cfg = |ms: &str| {
            Config::default().with_vars(|k| (k == "TCPX_TIMEOUT_MS").then(|| ms.to_string()))
        };
        let none = env(&[]);
        assert_eq!(
            engine_check(&lookup(&none), Ok(Config::default())).status,
            Status::Ok
        );
        assert_eq!(
            engine_check(&lookup(&none), cfg("3000")).status,
            Status::Missing
        );
        let short = env(&[(
            "NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS",
            "50000",
        )]);
        assert_eq!(
            engine_check(&lookup(&short), cfg("3000")).status,
            Status::Ok
        );
        let c = engine_check(&lookup(&none), cfg("x"));
        assert!(c.status == Status::Missing && c.detail.contains("TCPX_TIMEOUT_MS"));
    }
}
