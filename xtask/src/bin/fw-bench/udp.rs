//! Small-packet UDP: a sendmmsg sender (64-byte frames, batches of 64) and a
//! recvmmsg receiver that counts what arrives. The rate is what the
//! receiver got per second between its first and last packet: what the
//! filter on the sender's side let through, at the speed it let it through.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::json;

const BATCH: usize = 64;
/// UDP payload: with UDP, IPv4 and Ethernet headers a 64-byte frame.
const PAYLOAD: usize = 18;

pub fn send(dst: SocketAddr, seconds: f64) -> Result<serde_json::Value> {
    let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let socket = UdpSocket::bind(bind).context("binding the sender")?;
    socket.connect(dst).with_context(|| format!("connecting to {dst}"))?;
    let mut payload = [0u8; PAYLOAD];
    let mut iov: Vec<libc::iovec> =
        (0..BATCH).map(|_| libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: PAYLOAD }).collect();
    // SAFETY: zeroed mmsghdr is a valid "no name, no control" header.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut sent, mut errors) = (0u64, 0u64);
    while Instant::now() < deadline {
        // SAFETY: msgs points to BATCH initialized headers whose buffers live.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n < 0 {
            // A filter that drops (EPERM) or a full queue (ENOBUFS): count, go on.
            errors += 1;
        } else {
            sent += n as u64;
        }
    }
    Ok(json!({ "sent": sent, "errors": errors }))
}

pub fn recv(bind: SocketAddr, seconds: f64) -> Result<serde_json::Value> {
    let socket = UdpSocket::bind(bind).with_context(|| format!("binding the receiver to {bind}"))?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let fd = socket.as_raw_fd();
    let size: libc::c_int = 8 << 20;
    // SAFETY: a valid fd and a pointer to an int of the size given.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&size as *const libc::c_int).cast(), 4);
    }
    let mut bufs = vec![[0u8; 64]; BATCH];
    let mut iov: Vec<libc::iovec> =
        bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    // SAFETY: as in `send`.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    // Ready: the orchestrator starts the sender after this line.
    println!("{{\"ready\": true}}");
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut received, mut first, mut last) = (0u64, None::<Instant>, Instant::now());
    while Instant::now() < deadline {
        // SAFETY: msgs points to BATCH headers whose buffers live.
        let n =
            unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut()) };
        if n > 0 {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            received += n as u64;
        } else if first.is_some() && last.elapsed() > Duration::from_millis(300) {
            break; // the sender is done
        }
    }
    let secs = first.map_or(0.0, |f| (last - f).as_secs_f64());
    let pps = if secs > 0.0 { received as f64 / secs } else { 0.0 };
    Ok(json!({ "received": received, "seconds": secs, "pps": pps }))
}
