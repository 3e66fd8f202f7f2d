//! Long-lived traffic on background threads, for what happens *during* an
//! event (a phase switch, a daemon restart): a TCP source that streams to
//! whoever connects, a download that records its progress, a UDP flow of
//! sequence-numbered datagrams echoed back, and a paced sender of datagrams
//! that must all be dropped. Sockets are made in their namespace (see
//! [`in_netns`]); every loop is bounded and stops when its guard drops.

use std::{
    collections::BTreeSet,
    io::{self, Read as _, Write as _},
    mem,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{netns::Netns, traffic::in_netns};

/// No background loop runs longer than this, whatever the test does.
const LIFETIME: Duration = Duration::from_secs(60);

fn poll_in(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}

/// A TCP server that writes to each connection it accepts: `total` bytes
/// then a clean close, or, with `None`, until the connection fails or the
/// guard drops.
pub struct TcpSource {
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpSource {
    pub fn new(ns: &Netns, addr: SocketAddr, total: Option<usize>) -> Self {
        let listener = in_netns(ns, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding tcp {addr} in {}: {e}", ns.name()));
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            thread::spawn(move || {
                let started = Instant::now();
                let mut writers = Vec::new();
                while !stop.load(Ordering::SeqCst) && started.elapsed() < LIFETIME {
                    if !poll_in(listener.as_raw_fd(), Duration::from_millis(20)) {
                        continue;
                    }
                    let Ok((conn, _)) = listener.accept() else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let stop = stop.clone();
                    writers.push(thread::spawn(move || write_stream(conn, total, &stop)));
                }
                stop.store(true, Ordering::SeqCst);
                for w in writers {
                    let _ = w.join();
                }
            })
        };
        Self { accepted, stop, thread: Some(thread) }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn write_stream(mut conn: TcpStream, total: Option<usize>, stop: &AtomicBool) {
    let chunk = [0x5au8; 16 * 1024];
    let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
    let started = Instant::now();
    let mut left = total.unwrap_or(usize::MAX);
    while left > 0 && !stop.load(Ordering::SeqCst) && started.elapsed() < LIFETIME {
        let n = left.min(chunk.len());
        match conn.write(&chunk[..n]) {
            Ok(written) => left -= written,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
    // Let the peer read everything before the socket closes.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.read(&mut [0u8; 1]);
}

impl Drop for TcpSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP connection from `ns` to `to`, from local port `local_port` when
/// given (0: ephemeral), connected within `timeout`.
pub fn tcp_connect_from(ns: &Netns, to: SocketAddr, local_port: u16, timeout: Duration) -> io::Result<TcpStream> {
    in_netns(ns, || {
        let family = if to.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        // SAFETY: plain socket(2); owned by the TcpStream right away.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        // SO_SNDTIMEO bounds a blocking connect().
        stream.set_write_timeout(Some(timeout))?;
        let (local, local_len) = sockaddr(SocketAddr::new(unspecified(to.ip()), local_port));
        let (remote, remote_len) = sockaddr(to);
        // SAFETY: valid sockaddrs for their lengths.
        unsafe {
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const _ as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            if libc::bind(fd, &local as *const _ as *const libc::sockaddr, local_len) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, remote_len) != 0 {
                let e = io::Error::last_os_error();
                return Err(match e.raw_os_error() {
                    Some(libc::EINPROGRESS) | Some(libc::EAGAIN) => {
                        io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
                    }
                    _ => e,
                });
            }
        }
        stream.set_write_timeout(None)?;
        Ok(stream)
    })
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from([0u8; 4]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

/// `addr` as a `sockaddr_storage` of its family, and its length.
pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// How a download ended, or that it has not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Running,
    /// The peer closed cleanly.
    Eof,
    Error(String),
}

/// Reads a TCP connection on a background thread, recording the bytes
/// received and when the last ones came.
pub struct Download {
    bytes: Arc<AtomicU64>,
    started: Instant,
    /// Nanoseconds after `started` of the last progress.
    last_progress: Arc<AtomicU64>,
    end: Arc<Mutex<End>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Download {
    pub fn start(mut conn: TcpStream) -> Self {
        let bytes = Arc::new(AtomicU64::new(0));
        let last_progress = Arc::new(AtomicU64::new(0));
        let end = Arc::new(Mutex::new(End::Running));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let thread = {
            let (bytes, last, end, stop) = (bytes.clone(), last_progress.clone(), end.clone(), stop.clone());
            thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
                let mut buf = vec![0u8; 64 * 1024];
                let result = loop {
                    if stop.load(Ordering::SeqCst) || started.elapsed() > LIFETIME {
                        break End::Running;
                    }
                    match conn.read(&mut buf) {
                        Ok(0) => break End::Eof,
                        Ok(n) => {
                            bytes.fetch_add(n as u64, Ordering::SeqCst);
                            last.store(started.elapsed().as_nanos() as u64, Ordering::SeqCst);
                        }
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                        Err(e) => break End::Error(e.to_string()),
                    }
                };
                *end.lock().expect("download lock") = result;
            })
        };
        Self { bytes, started, last_progress, end, stop, thread: Some(thread) }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    pub fn end(&self) -> End {
        self.end.lock().expect("download lock").clone()
    }

    /// How long ago the last bytes arrived.
    pub fn idle(&self) -> Duration {
        let last = Duration::from_nanos(self.last_progress.load(Ordering::SeqCst));
        self.started.elapsed().saturating_sub(last)
    }

    /// Polls until `done` holds or `limit` passes; returns whether it held.
    pub fn wait(&self, limit: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if done(self) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        done(self)
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket in `ns` of `to`'s family on an ephemeral port, connected to
/// `to`.
fn udp_to(ns: &Netns, to: SocketAddr) -> UdpSocket {
    in_netns(ns, || {
        let socket = UdpSocket::bind((unspecified(to.ip()), 0))?;
        socket.connect(to)?;
        Ok::<_, io::Error>(socket)
    })
    .unwrap_or_else(|e| panic!("udp socket to {to} in {}: {e}", ns.name()))
}

/// Datagrams carrying sequence numbers 0, 1, 2... from `ns` to an echo
/// server at `to`, one every `every`; the echoes are collected, so that a
/// datagram lost in either direction is a missing number.
pub struct SeqFlow {
    sent: Arc<AtomicU64>,
    echoed: Arc<Mutex<BTreeSet<u64>>>,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<()>>,
    receiver: Option<JoinHandle<()>>,
    recv_stop: Arc<AtomicBool>,
}

impl SeqFlow {
    pub fn start(ns: &Netns, to: SocketAddr, every: Duration) -> Self {
        let socket = Arc::new(udp_to(ns, to));
        socket.set_read_timeout(Some(Duration::from_millis(20))).expect("udp read timeout");
        let sent = Arc::new(AtomicU64::new(0));
        let echoed = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let recv_stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let (socket, sent, stop) = (socket.clone(), sent.clone(), stop.clone());
            thread::spawn(move || {
                let started = Instant::now();
                let mut next = Instant::now();
                while !stop.load(Ordering::SeqCst) && started.elapsed() < LIFETIME {
                    // A send the kernel refuses is retried with the same
                    // number: only datagrams that left count.
                    let seq = sent.load(Ordering::SeqCst);
                    if socket.send(&seq.to_be_bytes()).is_ok() {
                        sent.store(seq + 1, Ordering::SeqCst);
                    }
                    next += every;
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        };
        let receiver = {
            let (echoed, recv_stop) = (echoed.clone(), recv_stop.clone());
            thread::spawn(move || {
                let started = Instant::now();
                let mut buf = [0u8; 64];
                while !recv_stop.load(Ordering::SeqCst) && started.elapsed() < LIFETIME {
                    if let Ok(8) = socket.recv(&mut buf) {
                        let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                        echoed.lock().expect("seq lock").insert(seq);
                    }
                }
            })
        };
        Self { sent, echoed, stop, sender: Some(sender), receiver: Some(receiver), recv_stop }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    pub fn echoed(&self) -> usize {
        self.echoed.lock().expect("seq lock").len()
    }

    /// Stops sending, waits (at most 1 s) for the last echoes, and returns
    /// (datagrams sent, sequence numbers never echoed).
    pub fn finish(mut self) -> (u64, Vec<u64>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
        let sent = self.sent();
        let start = Instant::now();
        while (self.echoed() as u64) < sent && start.elapsed() < Duration::from_secs(1) {
            thread::sleep(Duration::from_millis(10));
        }
        self.recv_stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.receiver.take() {
            let _ = t.join();
        }
        let echoed = self.echoed.lock().expect("seq lock");
        let missing = (0..sent).filter(|s| !echoed.contains(s)).collect();
        (sent, missing)
    }
}

impl Drop for SeqFlow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.recv_stop.store(true, Ordering::SeqCst);
        for t in [self.sender.take(), self.receiver.take()].into_iter().flatten() {
            let _ = t.join();
        }
    }
}

/// Sends a small datagram from `ns` to `to` every `every` until stopped (at
/// most `max` of them): a process that keeps trying a denied destination.
pub struct Pacer {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pacer {
    pub fn start(ns: &Netns, to: SocketAddr, every: Duration, max: u64) -> Self {
        let socket = udp_to(ns, to);
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (sent, stop) = (sent.clone(), stop.clone());
            thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::SeqCst) && sent.load(Ordering::SeqCst) < max {
                    // A send the kernel refuses (nothing left the host) is
                    // not counted as an attempt that could have passed.
                    if socket.send(b"denied?").is_ok() {
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                    next += every;
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        };
        Self { sent, stop, thread: Some(thread) }
    }

    /// Stops and returns how many datagrams were sent.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes `payload` on one thread while reading its echo on this one:
/// neither side's buffer can fill up and stall the other. Returns what came
/// back.
pub fn tcp_echo_bulk(conn: &mut TcpStream, payload: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let mut writer = conn.try_clone()?;
    let data = payload.to_vec();
    let write = thread::spawn(move || writer.write_all(&data));
    let mut back = vec![0u8; payload.len()];
    let read = conn.read_exact(&mut back);
    write.join().expect("writer thread")?;
    read?;
    Ok(back)
}
