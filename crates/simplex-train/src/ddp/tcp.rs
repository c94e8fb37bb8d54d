//! Ranks as processes over TCP: the rendezvous of every multi-process job and the collective of
//! CPU ranks (the path the CI tests run `simplex train --gpus N --device cpu` on).
//!
//! ```text
//! rendezvous  rank 0 listens on MASTER_ADDR:MASTER_PORT; every other rank connects (retrying
//!             until the timeout) and says hello: magic, world size, rank, job token; rank 0
//!             answers ok or why not (wrong world size, a rank twice, another job's token)
//! star        rank r > 0 talks to rank 0 only: a header (operation, sequence number, length)
//!             and its values; rank 0 combines the ranks' values in rank order and sends the
//!             result back (broadcast: rank 0 sends its values)
//! ```
//! Every read and write has the timeout; a closed connection (a rank that died: the kernel
//! closes its sockets) or a silent one ends the operation with an error naming the other rank.
//! The NCCL build uses the rendezvous only, to hand rank 0's NCCL id to the others.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use super::collective::{combine, on_host, Collective, ReduceOp};
use super::topology::Topology;
use crate::error::{Result, TrainError};

const MAGIC: &[u8; 8] = b"SPLXDDP1";

/// One rank's connections of a TCP job (see the module doc).
pub struct TcpComm {
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Rank 0: the connections to ranks 1.., in rank order; other ranks: the one to rank 0.
    peers: Vec<TcpStream>,
    seq: AtomicU64,
}

impl TcpComm {
    /// Runs the rendezvous of `topo` (rank 0 listens, the others connect), each step within
    /// `timeout`; `token` tells this job's ranks from another's on the same port.
    pub fn connect(topo: &Topology, token: u64, timeout: Duration) -> Result<TcpComm> {
        let err = |m: String| TrainError::distributed(topo.rank, m);
        let addr = format!("{}:{}", topo.master_addr, topo.master_port);
        let peers = if topo.world == 1 {
            Vec::new()
        } else if topo.rank == 0 {
            accept_all(topo, token, timeout, &addr)?
        } else {
            let deadline = Instant::now() + timeout;
            loop {
                match try_join(topo, token, timeout, &addr) {
                    Ok(s) => break vec![s],
                    Err(Join::Refused(m)) => return Err(err(m)),
                    Err(Join::NotYet(m)) if Instant::now() >= deadline => {
                        return Err(err(format!(
                            "could not reach rank 0 at {addr} within {} s ({m}): is rank 0 running, MASTER_ADDR/MASTER_PORT right?",
                            timeout.as_secs_f64()
                        )))
                    }
                    Err(Join::NotYet(_)) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        };
        Ok(TcpComm {
            rank: topo.rank,
            world: topo.world,
            timeout,
            peers,
            seq: AtomicU64::new(0),
        })
    }

    /// Overwrites every rank's `bytes` with rank 0's (any length; the NCCL id).
    pub fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        if self.rank == 0 {
            for (i, mut s) in self.peers.iter().enumerate() {
                let mut msg = (bytes.len() as u64).to_le_bytes().to_vec();
                msg.extend_from_slice(bytes);
                s.write_all(&msg).map_err(|e| self.io_err(i + 1, e))?;
            }
        } else {
            let mut s = &self.peers[0];
            let mut len = [0u8; 8];
            s.read_exact(&mut len).map_err(|e| self.io_err(0, e))?;
            let n = u64::from_le_bytes(len) as usize;
            if n > 1 << 20 {
                return Err(self.fail(format!("rank 0 sent {n} bytes: not a simplex rank 0")));
            }
            bytes.resize(n, 0);
            s.read_exact(bytes).map_err(|e| self.io_err(0, e))?;
        }
        Ok(())
    }

    fn fail(&self, m: String) -> TrainError {
        TrainError::distributed(self.rank, m)
    }

    fn io_err(&self, peer: usize, e: std::io::Error) -> TrainError {
        self.fail(match e.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => format!(
                "rank {peer} closed its connection (it stopped or died; its own output says why)"
            ),
            ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
                "no word from rank {peer} for {} s (hung, or busy longer than the timeout: --ddp-timeout raises it)",
                self.timeout.as_secs_f64()
            ),
            _ => format!("talking to rank {peer}: {e}"),
        })
    }

    /// One operation: `op` 1 sum, 2 max, 3 broadcast.
    fn run(&self, op: u8, data: &mut [f32]) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let header = Header {
            op,
            seq,
            len: data.len() as u64,
        };
        if self.rank == 0 {
            if op != 3 {
                let reduce = if op == 1 {
                    ReduceOp::Sum
                } else {
                    ReduceOp::Max
                };
                let mut buf = vec![0f32; data.len()];
                for (i, mut s) in self.peers.iter().enumerate() {
                    let h = Header::read(&mut s).map_err(|e| self.io_err(i + 1, e))?;
                    if h != header {
                        return Err(self.fail(format!(
                            "rank {} called collective #{} {} of {} values, rank 0 #{seq} {} of {}: the ranks run different code or settings",
                            i + 1, h.seq, h.name(), h.len, header.name(), header.len
                        )));
                    }
                    read_f32s(&mut s, &mut buf).map_err(|e| self.io_err(i + 1, e))?;
                    combine(data, &buf, reduce);
                }
            }
            let msg = header.with(data);
            for (i, mut s) in self.peers.iter().enumerate() {
                s.write_all(&msg).map_err(|e| self.io_err(i + 1, e))?;
            }
        } else {
            let mut s = &self.peers[0];
            if op != 3 {
                s.write_all(&header.with(data))
                    .map_err(|e| self.io_err(0, e))?;
            }
            let h = Header::read(&mut s).map_err(|e| self.io_err(0, e))?;
            if h != header {
                return Err(self.fail(format!(
                    "rank 0 answered collective #{} {} of {} values, this rank called #{seq} {} of {}: the ranks run different code or settings",
                    h.seq, h.name(), h.len, header.name(), header.len
                )));
            }
            read_f32s(&mut s, data).map_err(|e| self.io_err(0, e))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    op: u8,
    seq: u64,
    len: u64,
}

impl Header {
    fn name(&self) -> &'static str {
        match self.op {
            1 => "sum",
            2 => "max",
            3 => "broadcast",
            _ => "(unknown)",
        }
    }

    /// The header followed by `data`, as bytes.
    fn with(&self, data: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + 4 * data.len());
        out.push(self.op);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        for x in data {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    fn read(s: &mut impl Read) -> std::io::Result<Header> {
        let mut b = [0u8; 17];
        s.read_exact(&mut b)?;
        let u = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().unwrap_or([0; 8]));
        Ok(Header {
            op: b[0],
            seq: u(1..9),
            len: u(9..17),
        })
    }
}

fn read_f32s(s: &mut impl Read, out: &mut [f32]) -> std::io::Result<()> {
    let mut bytes = vec![0u8; 4 * out.len()];
    s.read_exact(&mut bytes)?;
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(())
}

fn configure(s: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))
}

fn hello(topo: &Topology, token: u64) -> Vec<u8> {
    let mut m = MAGIC.to_vec();
    m.extend_from_slice(&(topo.world as u64).to_le_bytes());
    m.extend_from_slice(&(topo.rank as u64).to_le_bytes());
    m.extend_from_slice(&token.to_le_bytes());
    m
}

/// Rank 0: accepts ranks 1..world within `timeout`; returns their connections in rank order.
fn accept_all(
    topo: &Topology,
    token: u64,
    timeout: Duration,
    addr: &str,
) -> Result<Vec<TcpStream>> {
    let err = |m: String| TrainError::distributed(0, m);
    let listener = TcpListener::bind(addr).map_err(|e| {
        err(format!(
            "cannot listen on {addr} (MASTER_ADDR:MASTER_PORT): {e}; is another job using the port?"
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| err(format!("{addr}: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut peers: Vec<Option<TcpStream>> = (1..topo.world).map(|_| None).collect();
    while peers.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((s, from)) => {
                let answer = (|| -> std::io::Result<std::result::Result<usize, String>> {
                    s.set_nonblocking(false)?;
                    configure(&s, timeout.min(Duration::from_secs(30)))?;
                    let mut b = [0u8; 32];
                    (&s).read_exact(&mut b)?;
                    let field =
                        |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
                    let (world, rank, tok) = (field(8), field(16), field(24));
                    let verdict = if &b[..8] != MAGIC {
                        Err("not a simplex rank".to_string())
                    } else if tok != token {
                        Err("another job (its SIMPLEX_DDP_TOKEN differs)".to_string())
                    } else if world as usize != topo.world {
                        Err(format!("WORLD_SIZE {world}, rank 0 has {}", topo.world))
                    } else if rank == 0 || rank as usize >= topo.world {
                        Err(format!("RANK {rank} is not in 1..{}", topo.world))
                    } else if peers[rank as usize - 1].is_some() {
                        Err(format!("rank {rank} already joined"))
                    } else {
                        Ok(rank as usize)
                    };
                    let reply = match &verdict {
                        Ok(_) => "ok".to_string(),
                        Err(m) => m.clone(),
                    };
                    let mut msg = (reply.len() as u64).to_le_bytes().to_vec();
                    msg.extend_from_slice(reply.as_bytes());
                    (&s).write_all(&msg)?;
                    Ok(verdict)
                })();
                match answer {
                    Ok(Ok(rank)) => {
                        configure(&s, timeout).map_err(|e| err(format!("rank {rank}: {e}")))?;
                        peers[rank - 1] = Some(s);
                    }
                    Ok(Err(why)) => tracing::warn!("rendezvous: refused {from}: {why}"),
                    Err(e) => tracing::warn!("rendezvous: {from}: {e}"),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> =
                        (1..topo.world).filter(|r| peers[r - 1].is_none()).collect();
                    return Err(err(format!(
                        "rank(s) {missing:?} did not join at {addr} within {} s",
                        timeout.as_secs_f64()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(err(format!("accepting on {addr}: {e}"))),
        }
    }
    Ok(peers.into_iter().flatten().collect())
}

enum Join {
    /// Rank 0 is not there (yet): try again.
    NotYet(String),
    /// Rank 0 said no: give up.
    Refused(String),
}

/// A rank > 0: one attempt to join rank 0 at `addr`.
fn try_join(
    topo: &Topology,
    token: u64,
    timeout: Duration,
    addr: &str,
) -> std::result::Result<TcpStream, Join> {
    let not_yet = |e: std::io::Error| Join::NotYet(e.to_string());
    let sa = addr
        .to_socket_addrs()
        .map_err(not_yet)?
        .next()
        .ok_or_else(|| Join::NotYet(format!("{addr} resolves to no address")))?;
    let s = TcpStream::connect_timeout(&sa, Duration::from_secs(2)).map_err(not_yet)?;
    configure(&s, timeout.min(Duration::from_secs(30))).map_err(not_yet)?;
    (&s).write_all(&hello(topo, token)).map_err(not_yet)?;
    let mut len = [0u8; 8];
    (&s).read_exact(&mut len).map_err(not_yet)?;
    let n = (u64::from_le_bytes(len) as usize).min(4096);
    let mut reply = vec![0u8; n];
    (&s).read_exact(&mut reply).map_err(not_yet)?;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    if reply != "ok" {
        return Err(Join::Refused(format!(
            "rank 0 at {addr} refused this rank: {reply}"
        )));
    }
    configure(&s, timeout).map_err(not_yet)?;
    Ok(s)
}

impl Collective for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        let code = match op {
            ReduceOp::Sum => 1,
            ReduceOp::Max => 2,
        };
        on_host(t, "tcp", self.rank, |d| self.run(code, d))
    }
    fn broadcast(&self, t: &Tensor) -> Result<()> {
        on_host(t, "tcp", self.rank, |d| self.run(3, d))
    }
    fn backend(&self) -> &'static str {
        "tcp"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(rank: usize, world: usize, port: u16) -> Topology {
        Topology {
            rank,
            world,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(29517)
    }

    /// Three ranks as threads over loopback: sums in rank order, maxima, broadcasts of values
    /// and bytes; then a rank that goes away and a rank that never comes.
    #[test]
    fn rendezvous_reduce_broadcast_and_a_dead_rank() -> Result<()> {
        let port = free_port();
        let t = Duration::from_secs(20);
        let outs: Vec<Result<Vec<f32>>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|r| {
                    s.spawn(move || -> Result<Vec<f32>> {
                        let c = TcpComm::connect(&topo(r, 3, port), 42, t)?;
                        let x = Tensor::new(&[r as f32, 1.0, -(r as f32)], &Device::Cpu)?;
                        c.all_reduce(&x, ReduceOp::Sum)?;
                        let m = Tensor::new(&[r as f32], &Device::Cpu)?;
                        c.all_reduce(&m, ReduceOp::Max)?;
                        let b = Tensor::new(&[r as f32 + 5.0], &Device::Cpu)?;
                        c.broadcast(&b)?;
                        let mut id = if r == 0 { vec![9u8; 128] } else { Vec::new() };
                        c.broadcast_bytes(&mut id)?;
                        assert_eq!(id, vec![9u8; 128]);
                        c.barrier()?;
                        let mut v = x.to_vec1::<f32>()?;
                        v.extend(m.to_vec1::<f32>()?);
                        v.extend(b.to_vec1::<f32>()?);
                        Ok(v)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for o in outs {
            assert_eq!(o?, vec![3.0, 3.0, -3.0, 2.0, 5.0]);
        }

        // rank 1 connects, then goes away: rank 0's next operation names it
        let port = free_port();
        let h = std::thread::spawn(move || {
            let c = TcpComm::connect(&topo(1, 2, port), 0, t);
            drop(c);
        });
        let c0 = TcpComm::connect(&topo(0, 2, port), 0, t)?;
        h.join().unwrap();
        let e = c0
            .all_reduce(&Tensor::new(&[1f32], &Device::Cpu)?, ReduceOp::Sum)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank 0: rank 1 closed its connection"), "{e}");

        // nobody listens: a rank > 0 gives up after the timeout, naming the address
        let port = free_port();
        let t0 = Instant::now();
        let e = TcpComm::connect(&topo(1, 2, port), 0, Duration::from_millis(300))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10));

        // another job's token is refused
        let port = free_port();
        let h = std::thread::spawn(move || {
            TcpComm::connect(&topo(0, 2, port), 1, Duration::from_secs(2)).err()
        });
        std::thread::sleep(Duration::from_millis(100));
        let e = TcpComm::connect(&topo(1, 2, port), 2, t)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("another job"), "{e}");
        let e0 = h.join().unwrap().map(|e| e.to_string()).unwrap_or_default();
        assert!(e0.contains("did not join"), "{e0}");
        Ok(())
    }
}
