//! Benchmark client.
//!
//! usage: client --addr 127.0.0.1:PORT --pid SERVER_PID --conns C --n N [--size 100]
//!               [--reps 3] [--ip-base 10] [--timeout 60]
//!
//! 1. reads the server's VmRSS, opens C WebSocket connections (source addresses
//!    127.<ip-base>.0.2, .3, ... rotating every 10,000 connections), waits until all are
//!    idle for 3 s, reads VmRSS again -> KiB per connection.
//! 2. fan-out, `reps` times: connection 0 sends "go:N:SIZE"; wall time until all C*N text
//!    messages arrived (timeout bounded), and the server's utime+stime over that window.
//! 3. after 3 s idle, VmRSS again (memory retained after traffic).
//!
//! Prints one `RESULT key=value ...` line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::{Mutex, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const CONNS_PER_IP: usize = 10_000;
const CLK_TCK: f64 = 100.0;

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server status");
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// utime + stime in seconds.
fn cpu_s(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 and 15 of stat; rest starts at field 3
    let ut: f64 = f[11].parse().unwrap();
    let st: f64 = f[12].parse().unwrap();
    (ut + st) / CLK_TCK
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let addr: SocketAddr = get("--addr").expect("--addr").parse().unwrap();
    let pid: u32 = get("--pid").expect("--pid").parse().unwrap();
    let conns: usize = get("--conns").expect("--conns").parse().unwrap();
    let n: u64 = get("--n").expect("--n").parse().unwrap();
    let size: usize = get("--size").map(|s| s.parse().unwrap()).unwrap_or(100);
    let reps: usize = get("--reps").map(|s| s.parse().unwrap()).unwrap_or(3);
    let ip_base: u8 = get("--ip-base").map(|s| s.parse().unwrap()).unwrap_or(10);
    let timeout_s: u64 = get("--timeout").map(|s| s.parse().unwrap()).unwrap_or(60);
    assert!(conns >= 1 && conns <= 19_000, "conns must be 1..=19000 (20k fd cap)");
    assert!(reps <= 20);

    let received = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let sink0 = Arc::new(Mutex::new(None));
    let sem = Arc::new(Semaphore::new(256));
    let cfg = WebSocketConfig::default().read_buffer_size(4096);
    let url = format!("ws://{addr}/ws");

    let rss_before = rss_kib(pid);
    let t_connect = Instant::now();
    for i in 0..conns {
        let ip = IpAddr::V4(Ipv4Addr::new(127, ip_base, 0, 2 + (i / CONNS_PER_IP) as u8));
        let (received, connected, failed, sink0, sem, url) =
            (received.clone(), connected.clone(), failed.clone(), sink0.clone(), sem.clone(), url.clone());
        tokio::spawn(async move {
            let permit = sem.acquire_owned().await.unwrap();
            let fut = async {
                let sock = TcpSocket::new_v4()?;
                sock.bind(SocketAddr::new(ip, 0))?;
                let tcp = sock.connect(addr).await?;
                tcp.set_nodelay(true)?;
                tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(cfg))
                    .await
                    .map_err(std::io::Error::other)
            };
            let ws = match tokio::time::timeout(Duration::from_secs(10), fut).await {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(e)) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("connect {i} failed: {e}");
                    }
                    return;
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            drop(permit);
            let (sink, mut stream) = ws.split();
            let _keep = if i == 0 {
                *sink0.lock().await = Some(sink);
                None
            } else {
                Some(sink)
            };
            connected.fetch_add(1, Ordering::Relaxed);
            // Ends when the server closes or when the process exits.
            while let Some(Ok(m)) = stream.next().await {
                if m.is_text() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Wait (bounded) for all connects to finish.
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < conns
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    let ok = connected.load(Ordering::Relaxed);
    let fail = failed.load(Ordering::Relaxed);
    eprintln!("connected {ok}/{conns} (failed {fail}) in {connect_s:.2}s; idling 3 s");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = rss_kib(pid);
    let kib_idle = (rss_idle as f64 - rss_before as f64) / conns as f64;

    // Fan-out phase.
    let mut out = format!(
        "RESULT conns={conns} connected={ok} failed={fail} connect_s={connect_s:.2} \
         rss_before_kib={rss_before} rss_idle_kib={rss_idle} kib_per_conn_idle={kib_idle:.2} \
         n={n} size={size}"
    );
    let mut sink = sink0.lock().await.take();
    let expected = ok as u64 * n;
    let me = std::process::id().to_string();
    for r in 0..reps {
        let Some(s) = sink.as_mut() else { break };
        received.store(0, Ordering::SeqCst);
        let (scpu0, ccpu0) = (cpu_s(&pid.to_string()), cpu_s(&me));
        let t0 = Instant::now();
        if s.send(Message::text(format!("go:{n}:{size}"))).await.is_err() {
            eprintln!("send go failed");
            break;
        }
        let deadline = t0 + Duration::from_secs(timeout_s);
        while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let wall = t0.elapsed().as_secs_f64();
        let (scpu1, ccpu1) = (cpu_s(&pid.to_string()), cpu_s(&me));
        let got = received.load(Ordering::Relaxed);
        let scpu = scpu1 - scpu0;
        let dps = got as f64 / wall;
        let dpc = if scpu > 0.0 { got as f64 / scpu } else { f64::NAN };
        eprintln!(
            "rep {r}: {got}/{expected} in {wall:.3}s = {dps:.0}/s; server cpu {scpu:.2}s \
             ({dpc:.0}/cpu-s); client cpu {:.2}s",
            ccpu1 - ccpu0
        );
        out += &format!(
            " r{r}_wall_s={wall:.4} r{r}_got={got} r{r}_expected={expected} r{r}_server_cpu_s={scpu:.2} \
             r{r}_client_cpu_s={:.2} r{r}_dps={dps:.0} r{r}_dpcpu={dpc:.0}",
            ccpu1 - ccpu0
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss_kib(pid);
    let kib_after = (rss_after as f64 - rss_before as f64) / conns as f64;
    out += &format!(" rss_after_fanout_kib={rss_after} kib_per_conn_after_fanout={kib_after:.2}");
    println!("{out}");
}
