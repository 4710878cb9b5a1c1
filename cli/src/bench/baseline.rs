//! `--baseline`: plain TCP ping-pong, the CUDA driver's copy and `iperf3`, measured on the
//! same machine in the same run, for the ratios printed next to the engine's rows.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use cudarc::driver::result as cu;
use tcpx::net::MemKind;

use super::buffers::{cuda_err, Buf, Gpu};
use super::endpoint::{process_cpu, Count, MIN_TRANSFER_TIMEOUT};
use super::report::Row;
use super::BenchResult;

/// A baseline's row: `run` fills each slot with one iteration's time, first for the warm-ups,
/// then for the iterations they call for, with the process's CPU time over the latter.
fn timed(
    size: u64,
    count: Count,
    mut run: impl FnMut(&mut [Duration]) -> BenchResult<()>,
) -> BenchResult<Row> {
    let mut warm = vec![Duration::ZERO; count.warmups(size)];
    run(&mut warm)?;
    let mut times = vec![Duration::ZERO; count.iters(size, &warm)];
    let cpu = process_cpu();
    run(&mut times)?;
    Ok(Row::from_times(size, &times).with_cpu(process_cpu() - cpu))
}

/// The driver copy that moves what a `src` → `dst` transfer moves.
pub(super) fn copy_name(src: MemKind, dst: MemKind) -> &'static str {
    match (src, dst) {
        (MemKind::Host, MemKind::Device) => "cuMemcpyHtoD",
        (MemKind::Device, MemKind::Host) => "cuMemcpyDtoH",
        (MemKind::Device, MemKind::Device) => "cuMemcpyDtoD",
        (MemKind::Host, MemKind::Host) => "memcpy",
    }
}

/// `size` bytes `src` → `dst` with the synchronous driver copy, timed to the context's
/// synchronize; warm-up and iteration counts as for the engine.
pub(super) fn copy_row(
    gpu: &Gpu,
    src: &Buf,
    dst: &mut Buf,
    size: u64,
    count: Count,
) -> BenchResult<Row> {
    let n = size as usize;
    gpu.ctx
        .bind_to_thread()
        .map_err(cuda_err("cuCtxSetCurrent"))?;
    let run = |times: &mut [Duration]| -> BenchResult<()> {
        for t in times.iter_mut() {
            let t0 = Instant::now();
            // SAFETY: every range is the first `n` bytes of a buffer at least `n` long
            // (sized for the largest transfer); a context of one of the devices is bound, and
            // the driver routes a copy between two GPUs' memory by address (unified
            // addressing).
            unsafe {
                match (src, &mut *dst) {
                    (Buf::Host(s), Buf::Cuda(d)) => cu::memcpy_htod_sync(d.ptr(), &s[..n]),
                    (Buf::Cuda(s), Buf::Host(d)) => cu::memcpy_dtoh_sync(&mut d[..n], s.ptr()),
                    (Buf::Cuda(s), Buf::Cuda(d)) => cu::memcpy_dtod_sync(d.ptr(), s.ptr(), n),
                    (Buf::Host(s), Buf::Host(d)) => {
                        d[..n].copy_from_slice(&s[..n]);
                        Ok(())
                    }
                }
            }
            .map_err(cuda_err("cuMemcpy"))?;
            gpu.ctx
                .synchronize()
                .map_err(cuda_err("cuCtxSynchronize"))?;
            *t = t0.elapsed();
        }
        Ok(())
    };
    timed(size, count, run)
}

/// Plain TCP between two threads: the sender writes `src`, the receiver reads it all and
/// replies one byte before the next iteration. Timed like ours: from the sender's write
/// start to the receiver's last byte (the reply is outside the timed span; it only keeps the
/// iterations apart, as the engine's barrier does).
pub(super) fn tcp_pingpong(src: &[u8], dst: &mut [u8], count: Count) -> BenchResult<Row> {
    let io = |what: &'static str| move |e: std::io::Error| format!("tcp baseline: {what}: {e}");
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let tx = TcpStream::connect(l.local_addr().map_err(io("bind"))?).map_err(io("connect"))?;
    let (rx, _) = l.accept().map_err(io("accept"))?;
    for s in [&tx, &rx] {
        s.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
        s.set_read_timeout(Some(MIN_TRANSFER_TIMEOUT))
            .map_err(io("timeout"))?;
    }
    let run = |times: &mut [Duration]| -> BenchResult<()> {
        let now = Instant::now();
        let mut starts = vec![now; times.len()];
        let mut ends = vec![now; times.len()];
        let (a, b) = thread::scope(|sc| {
            let h = sc.spawn(|| -> std::io::Result<()> {
                for e in ends.iter_mut() {
                    (&rx).read_exact(dst)?;
                    *e = Instant::now();
                    (&rx).write_all(&[1])?;
                }
                Ok(())
            });
            let a = (|| -> std::io::Result<()> {
                let mut one = [0u8; 1];
                for st in starts.iter_mut() {
                    *st = Instant::now();
                    (&tx).write_all(src)?;
                    (&tx).read_exact(&mut one)?;
                }
                Ok(())
            })();
            if a.is_err() {
                // Wakes the receiver out of its blocking read.
                let _ = tx.shutdown(Shutdown::Both);
            }
            (a, h.join())
        });
        a.map_err(io("send"))?;
        b.map_err(|_| "tcp baseline: receiver panicked".to_string())?
            .map_err(io("receive"))?;
        for ((t, s), e) in times.iter_mut().zip(&starts).zip(&ends) {
            *t = *e - *s;
        }
        Ok(())
    };
    let size = src.len() as u64;
    timed(size, count, run)
}

/// `iperf3 -c 127.0.0.1 -P streams` against a one-shot server of ours; GB/s received.
pub(crate) fn run_iperf3(streams: u32) -> BenchResult<f64> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port()
        .to_string();
    let mut server = match Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("iperf3 is not on PATH (apt-get install iperf3)".into())
        }
        Err(e) => return Err(format!("cannot start iperf3: {e}")),
    };
    let mut result = Err("the iperf3 client never reached the server".to_string());
    // The server needs a moment to listen; a refused client exits at once, so retry.
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(100));
        let out = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port, "-t", "2", "--json"])
            .args(["-P", &streams.to_string()])
            .stderr(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => {
                result = parse_iperf3(&String::from_utf8_lossy(&out.stdout))
                    .map(|bps| bps / 8e9)
                    .ok_or_else(|| "iperf3 --json had no end.sum_received".to_string());
                break;
            }
            Ok(_) => {}
            Err(e) => {
                result = Err(format!("cannot run the iperf3 client: {e}"));
                break;
            }
        }
        if matches!(server.try_wait(), Ok(Some(_))) {
            result = Err("the iperf3 server exited early".into());
            break;
        }
    }
    if matches!(server.try_wait(), Ok(None)) {
        let _ = server.kill();
    }
    let _ = server.wait();
    result
}

/// `end.sum_received.bits_per_second` from iperf3's JSON, without a JSON parser: the key
/// `sum_received` appears once, in `end`, and its first `bits_per_second` is the total.
pub(super) fn parse_iperf3(json: &str) -> Option<f64> {
    let rest = &json[json.find("\"sum_received\"")?..];
    let rest = &rest[rest.find("\"bits_per_second\"")? + "\"bits_per_second\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_json_total_is_found() {
        let j = r#"{"intervals":[{"sum":{"bits_per_second":1}}],
            "end":{"sum_sent":{"bits_per_second":2.5e10},
            "sum_received": {"start":0,"bits_per_second": 2.25e10,"sender":true}}}"#;
        assert_eq!(parse_iperf3(j), Some(2.25e10));
        assert_eq!(parse_iperf3("{}"), None);
    }
}
