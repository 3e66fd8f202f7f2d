//! Sockets in a network namespace: echo servers in the far namespace that
//! count what reaches them, and clients in the near one.
//!
//! A socket belongs to the namespace of the thread that created it, for its
//! whole life, so [`in_netns`] runs a closure on a fresh thread that first
//! joins the namespace; the sockets it returns can then be used from
//! anywhere. Servers are bound before any client runs: no readiness waits.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use super::netns::Netns;

/// How long a client waits for something that must get through.
pub const PASS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client waits for something that must be dropped. The peer is
/// one veth away: an answer, when there is one, takes well under 1 ms.
pub const DROP_TIMEOUT: Duration = Duration::from_millis(400);

/// Runs `f` on a thread that has joined `ns`'s network namespace.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let path = ns.path();
    thread::scope(|s| {
        s.spawn(move || {
            let file = fs::File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            // SAFETY: setns on a valid descriptor; it changes only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {}: {}", path.display(), io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Whether the server side saw a connection or a datagram.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// One echo server (TCP or UDP) on one address, on its own thread until
/// dropped. `received()` counts accepted connections or datagrams.
pub struct Echo {
    received: Counter,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    pub fn tcp(ns: &Netns, addr: SocketAddr) -> Self {
        let listener = in_netns(ns, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding tcp {addr} in {}: {e}", ns.name()));
        Self::spawn(move |received, stop| serve_tcp(&listener, &received, &stop))
    }

    pub fn udp(ns: &Netns, addr: SocketAddr) -> Self {
        let socket = in_netns(ns, || UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("binding udp {addr} in {}: {e}", ns.name()));
        Self::spawn(move |received, stop| serve_udp(&socket, &received, &stop))
    }

    fn spawn(serve: impl FnOnce(Counter, Arc<AtomicBool>) + Send + 'static) -> Self {
        let received = Counter::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            thread::spawn(move || serve(received, stop))
        };
        Self { received, stop, thread: Some(thread) }
    }

    pub fn received(&self) -> usize {
        self.received.get()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Servers notice `stop` within this long.
const POLL_TICK: Duration = Duration::from_millis(50);

/// Waits up to [`POLL_TICK`] for `fd` to become readable.
fn readable(fd: i32) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, for the length we pass.
    let n = unsafe { libc::poll(&mut pfd, 1, POLL_TICK.as_millis() as i32) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

fn serve_tcp(listener: &TcpListener, received: &Counter, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        if !readable(listener.as_raw_fd()) {
            continue;
        }
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        received.bump();
        let _ = conn.set_read_timeout(Some(PASS_TIMEOUT));
        let mut buf = [0u8; 1024];
        // Echo until the client closes (or goes quiet).
        while let Ok(n @ 1..) = conn.read(&mut buf) {
            if conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }
}

fn serve_udp(socket: &UdpSocket, received: &Counter, stop: &AtomicBool) {
    // Room for the largest datagram: a truncated echo is no echo.
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::SeqCst) {
        if !readable(socket.as_raw_fd()) {
            continue;
        }
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            received.bump();
            let _ = socket.send_to(&buf[..n], peer);
        }
    }
}

/// What a client saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The payload came back unchanged.
    Echoed,
    /// The connection attempt timed out (TCP), or no reply came (UDP).
    TimedOut,
    /// Anything else: refused, unreachable, wrong echo... (a setup problem,
    /// or the enforcer answering in a way it should not).
    Failed(String),
}

/// Connects to `addr`, sends a payload and reads it back.
pub fn tcp_echo(addr: SocketAddr, connect_timeout: Duration) -> Outcome {
    let mut conn = match TcpStream::connect_timeout(&addr, connect_timeout) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => return Outcome::TimedOut,
        Err(e) => return Outcome::Failed(format!("connect {addr}: {e}")),
    };
    let payload = format!("hello {addr} over tcp");
    let echoed = (|| {
        conn.set_read_timeout(Some(PASS_TIMEOUT))?;
        conn.set_write_timeout(Some(PASS_TIMEOUT))?;
        conn.write_all(payload.as_bytes())?;
        let mut back = vec![0u8; payload.len()];
        conn.read_exact(&mut back)?;
        Ok::<_, io::Error>(back)
    })();
    match echoed {
        Ok(back) if back == payload.as_bytes() => Outcome::Echoed,
        Ok(back) => Outcome::Failed(format!("{addr} echoed {:?}", String::from_utf8_lossy(&back))),
        Err(e) => Outcome::Failed(format!("echo over {addr}: {e}")),
    }
}

/// A UDP socket of `addr`'s family on an ephemeral port.
fn udp_client(addr: SocketAddr) -> io::Result<UdpSocket> {
    let any: IpAddr = match addr {
        SocketAddr::V4(_) => IpAddr::from([0u8; 4]),
        SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
    };
    UdpSocket::bind((any, 0))
}

/// Sends one datagram to `addr` and waits up to `timeout` for its echo.
pub fn udp_echo(addr: SocketAddr, timeout: Duration) -> Outcome {
    let payload = format!("hello {addr} over udp");
    let result = (|| {
        let socket = udp_client(addr)?;
        socket.connect(addr)?;
        socket.send(payload.as_bytes())?;
        let mut back = [0u8; 2048];
        // A signal interrupts a receive with a timeout (never restarted):
        // wait again for what is left.
        let deadline = std::time::Instant::now() + timeout;
        let n = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            match socket.recv(&mut back) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted && !left.is_zero() => continue,
                other => break other?,
            }
        };
        Ok::<_, io::Error>(back[..n].to_vec())
    })();
    match result {
        Ok(back) if back == payload.as_bytes() => Outcome::Echoed,
        Ok(back) => Outcome::Failed(format!("{addr} echoed {:?}", String::from_utf8_lossy(&back))),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Outcome::TimedOut,
        Err(e) => Outcome::Failed(format!("udp {addr}: {e}")),
    }
}

/// Sends `count` datagrams of `len` bytes to `addr`, without waiting for
/// anything; panics if the kernel refuses one.
pub fn udp_send(addr: SocketAddr, count: usize, len: usize) {
    let socket = udp_client(addr).unwrap_or_else(|e| panic!("udp socket for {addr}: {e}"));
    let payload = vec![b'x'; len];
    for i in 0..count {
        let sent = socket.send_to(&payload, addr).unwrap_or_else(|e| panic!("datagram {i} to {addr}: {e}"));
        assert_eq!(sent, len);
    }
}
