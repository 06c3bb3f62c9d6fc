//! Constant-rate (open-loop) HTTP/1.1 load generator for the keygate benchmark,
//! in the manner of wrk2: each of C keep-alive connections owns every C-th send
//! slot of a fixed schedule (slot i at t0 + i/rate), so the offered load does
//! not drop when the server slows down. Each request may carry its own access
//! key (a tokens file, cycled from an offset), which wrk2 and oha cannot do.
//!
//! Latency of a request = response complete - start, where start is the slot's
//! scheduled time if the connection was still busy with the previous request
//! then (the server's delay is charged, no coordinated omission), and else the
//! moment it was written (our own timer wake-up jitter is not charged).
//!
//! Usage: bench-load --addr 127.0.0.1:PORT --path /v1/chat/completions
//!          [--method POST] [--body-file F] [--tokens-file F] [--token-offset N]
//!          --rate R --duration S [--connections C] [--warmup S]
//! Prints one JSON object on stdout.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

extern "C" {
    fn prctl(option: i32, ...) -> i32;
}
const PR_SET_TIMERSLACK: i32 = 29;

struct Args {
    addr: String,
    method: String,
    path: String,
    body: Vec<u8>,
    tokens: Vec<String>,
    offset: usize,
    rate: f64,
    duration: f64,
    warmup: f64,
    connections: usize,
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-load: {msg}");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut map = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let Some(name) = k.strip_prefix("--") else { fail(&format!("unexpected argument {k}")) };
        let Some(v) = it.next() else { fail(&format!("--{name} needs a value")) };
        map.insert(name.to_string(), v);
    }
    let get = |k: &str| map.get(k).cloned();
    let num = |k: &str, d: f64| get(k).map(|v| v.parse::<f64>().unwrap_or_else(|_| fail(&format!("--{k}: not a number")))).unwrap_or(d);
    let body = match get("body-file") {
        Some(p) => std::fs::read(&p).unwrap_or_else(|e| fail(&format!("{p}: {e}"))),
        None => Vec::new(),
    };
    let tokens = match get("tokens-file") {
        Some(p) => std::fs::read_to_string(&p)
            .unwrap_or_else(|e| fail(&format!("{p}: {e}")))
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => Vec::new(),
    };
    let args = Args {
        addr: get("addr").unwrap_or_else(|| fail("--addr is required")),
        method: get("method").unwrap_or_else(|| if body.is_empty() { "GET".into() } else { "POST".into() }),
        path: get("path").unwrap_or_else(|| "/".into()),
        body,
        tokens,
        offset: num("token-offset", 0.0) as usize,
        rate: num("rate", 1000.0),
        duration: num("duration", 5.0),
        warmup: num("warmup", 0.0),
        connections: num("connections", 16.0) as usize,
    };
    if args.rate <= 0.0 || args.duration <= 0.0 || args.connections == 0 {
        fail("--rate, --duration and --connections must be positive");
    }
    args
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response; returns its status, and whether the server closes.
fn read_response(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, bool)> {
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = 0usize;
    let mut chunked = false;
    let mut close = false;
    for line in head.split("\r\n").skip(1) {
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("transfer-encoding:") {
            chunked = v.contains("chunked");
        } else if let Some(v) = line.strip_prefix("connection:") {
            close = v.contains("close");
        }
    }
    if chunked {
        loop {
            if let Some(i) = find(&buf[head_end..], b"0\r\n\r\n") {
                let end = head_end + i + 5;
                buf.drain(..end);
                return Ok((status, close));
            }
            let n = sock.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    while buf.len() < head_end + length {
        let n = sock.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + length);
    Ok((status, close))
}

#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    late: u64,
    sent: u64,
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

fn worker(args: Arc<Args>, j: usize, t0: Instant, measure_from: Instant, end: Instant) -> Tally {
    // Precise sleeps (the default timer slack is 50 µs).
    unsafe {
        prctl(PR_SET_TIMERSLACK, 1u64);
    }
    let mut tally = Tally::default();
    let mut sock = match connect(&args.addr) {
        Ok(s) => Some(s),
        Err(_) => None,
    };
    let host = format!("host: {}\r\n", args.addr);
    let mut prefix = format!("{} {} HTTP/1.1\r\n{}", args.method, args.path, host);
    if !args.body.is_empty() {
        prefix.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n", args.body.len()));
    }
    let interval = 1.0 / args.rate;
    let c = args.connections;
    let mut buf = Vec::with_capacity(16384);
    let mut req = Vec::with_capacity(prefix.len() + args.body.len() + 128);
    let mut prev_done = t0;
    let mut k = 0usize;
    loop {
        let slot = k * c + j;
        k += 1;
        let intended = t0 + Duration::from_secs_f64(slot as f64 * interval);
        if intended >= end {
            break;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        req.clear();
        req.extend_from_slice(prefix.as_bytes());
        if !args.tokens.is_empty() {
            let t = &args.tokens[(args.offset + slot) % args.tokens.len()];
            req.extend_from_slice(b"authorization: Bearer ");
            req.extend_from_slice(t.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(&args.body);
        if sock.is_none() {
            sock = connect(&args.addr).ok();
        }
        let Some(s) = sock.as_mut() else {
            tally.errors += 1;
            continue;
        };
        let sent_at = Instant::now();
        let busy = prev_done > intended;
        let start = if busy { intended } else { sent_at };
        let result = s.write_all(&req).and_then(|_| read_response(s, &mut buf));
        let done = Instant::now();
        prev_done = done;
        tally.sent += 1;
        match result {
            Ok((status, close)) => {
                if intended >= measure_from {
                    tally.latencies_ns.push((done - start).as_nanos() as u64);
                    *tally.statuses.entry(status).or_default() += 1;
                    if busy {
                        tally.late += 1;
                    }
                }
                if close {
                    sock = None;
                    buf.clear();
                }
            }
            Err(_) => {
                tally.errors += 1;
                sock = None;
                buf.clear();
            }
        }
    }
    tally
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn main() {
    let args = Arc::new(parse_args());
    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let handles: Vec<_> = (0..args.connections)
        .map(|j| {
            let a = args.clone();
            std::thread::spawn(move || worker(a, j, start, measure_from, end))
        })
        .collect();
    let mut all = Tally::default();
    for h in handles {
        let t = h.join().unwrap_or_default();
        all.latencies_ns.extend(t.latencies_ns);
        for (s, n) in t.statuses {
            *all.statuses.entry(s).or_default() += n;
        }
        all.errors += t.errors;
        all.late += t.late;
        all.sent += t.sent;
    }
    let wall = Instant::now().duration_since(measure_from).as_secs_f64().max(1e-9);
    all.latencies_ns.sort_unstable();
    let l = &all.latencies_ns;
    let mean = if l.is_empty() { 0.0 } else { l.iter().sum::<u64>() as f64 / l.len() as f64 / 1000.0 };
    let statuses: Vec<String> = all.statuses.iter().map(|(s, n)| format!("\"{s}\":{n}")).collect();
    let slots_total = ((args.warmup + args.duration) * args.rate).ceil() as usize;
    println!(
        "{{\"rate\":{},\"duration\":{},\"connections\":{},\"requests\":{},\"sent\":{},\"achieved_rps\":{:.1},\"errors\":{},\"late\":{},\
\"statuses\":{{{}}},\"latency_us\":{{\"mean\":{:.1},\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}},\
\"tokens\":{},\"token_offset\":{},\"slots\":{},\"tokens_wrapped\":{}}}",
        args.rate,
        args.duration,
        args.connections,
        l.len(),
        all.sent,
        l.len() as f64 / wall.min(args.duration + 0.5).max(args.duration),
        all.errors,
        all.late,
        statuses.join(","),
        mean,
        pct(l, 50.0),
        pct(l, 90.0),
        pct(l, 99.0),
        pct(l, 99.9),
        pct(l, 100.0),
        args.tokens.len(),
        args.offset,
        slots_total,
        !args.tokens.is_empty() && slots_total > args.tokens.len()
    );
}
