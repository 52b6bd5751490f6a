//! A client that sends requests over new connections, one after the other, to an app that
//! answers each with its pid: what the reload and restart tests watch while children come
//! and go on a held socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the client saw: answers, failures, and each child's first answer (its pid, and how
/// long the request that got it waited).
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
    firsts: Mutex<Vec<(u32, Duration)>>,
}

pub struct Client {
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    pub fn start(port: u16) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let (s, to) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most this many requests, whatever happens.
            for _ in 0..200_000 {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let sent = Instant::now();
                match request(port) {
                    Ok(pid) => {
                        to.ok.fetch_add(1, Ordering::Relaxed);
                        let mut firsts = to.firsts.lock().unwrap();
                        if firsts.last().map(|&(last, _)| last) != Some(pid) {
                            firsts.push((pid, sent.elapsed()));
                        }
                    }
                    Err(e) => to.failed.lock().unwrap().push(e),
                }
            }
        });
        Client { stop, seen, thread: Some(thread) }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.seen.ok.load(Ordering::Relaxed)
    }

    /// The children that answered so far, in order.
    pub fn pids(&self) -> Vec<u32> {
        self.seen.firsts.lock().unwrap().iter().map(|&(pid, _)| pid).collect()
    }

    pub fn last_pid(&self) -> Option<u32> {
        self.pids().last().copied()
    }

    /// Stops; the requests answered, the failures, and each child's first answer.
    pub fn finish(mut self) -> (u64, Vec<String>, Vec<(u32, Duration)>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the client thread");
        }
        let failed = self.seen.failed.lock().unwrap().clone();
        let firsts = self.seen.firsts.lock().unwrap().clone();
        (self.answered(), failed, firsts)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One `GET /` over a new connection: the pid the app answered with.
pub fn request(port: u16) -> Result<u32, String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("read: {e}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or(format!("no answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.0 200") {
        return Err(format!("status: {head:?}"));
    }
    body.parse().map_err(|_| format!("body: {body:?}"))
}
