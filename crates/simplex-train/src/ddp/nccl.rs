//! NCCL between CUDA ranks (feature `nccl`), with a watchdog that ends a stuck rank.
//!
//! NCCL is loaded when a job starts (`dlopen` of `$SIMPLEX_NCCL_LIB`, else `libnccl.so.2`),
//! not linked: building needs no NCCL, and a binary built with the feature starts and trains
//! on one GPU where there is none. (cudarc's `nccl` feature links `libnccl` under candle's
//! `dynamic-linking`, and its `Comm` keeps the raw communicator to itself, which the watchdog
//! below needs.) The entry points used: `ncclGetVersion`, `ncclGetUniqueId`,
//! `ncclCommInitRank`, `ncclAllReduce`, `ncclBroadcast`, `ncclCommGetAsyncError`,
//! `ncclCommAbort`, `ncclGetErrorString`, `ncclGetLastError`.
//!
//! Collectives run in place on candle's stream of the device, after and before the kernels
//! around them (no host synchronization; see buckets.rs for what that overlaps).
//!
//! A rank that dies leaves the others' NCCL kernels waiting forever. The watchdog thread of
//! each rank polls `ncclCommGetAsyncError` (NCCL reports a peer whose connection broke) and
//! the time since the trainer last made progress ([`Collective::progress`], every update and
//! after every eval; armed from the first update on: setting up may take long on rank 0); on
//! an error, or no progress for the timeout, it prints why, aborts the communicator and ends
//! the process with status 1. `ncclCommInitRank` gets the same timeout.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DevicePtrMut;
use candle_core::{CpuStorage, CudaStorage, DType, Device, InplaceOp1, Layout, Tensor};
use libloading::Library;

use super::collective::{Collective, ReduceOp};
use crate::error::{Result, TrainError};

const FLOAT32: c_int = 7;
const SUM: c_int = 0;
const MAX: c_int = 2;
const SUCCESS: c_int = 0;
const IN_PROGRESS: c_int = 7;

#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [c_char; 128],
}

type RawComm = *mut c_void;
type RawStream = *mut c_void;
type Xfer = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    RawComm,
    RawStream,
) -> c_int;

struct Api {
    _lib: Library,
    version: unsafe extern "C" fn(*mut c_int) -> c_int,
    unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    init_rank: unsafe extern "C" fn(*mut RawComm, c_int, UniqueId, c_int) -> c_int,
    all_reduce: Xfer,
    broadcast: Xfer,
    async_error: unsafe extern "C" fn(RawComm, *mut c_int) -> c_int,
    abort: unsafe extern "C" fn(RawComm) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    last_error: Option<unsafe extern "C" fn(RawComm) -> *const c_char>,
}

static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();

fn load() -> std::result::Result<Api, String> {
    let names = match std::env::var("SIMPLEX_NCCL_LIB") {
        Ok(p) => vec![p],
        Err(_) => vec!["libnccl.so.2".to_string(), "libnccl.so".to_string()],
    };
    let mut why = Vec::new();
    for name in &names {
        // SAFETY: loading NCCL runs its initializers, which have no preconditions
        match unsafe { Library::new(name) } {
            Ok(lib) => return unsafe { bind(lib) }.map_err(|e| format!("{name}: {e}")),
            Err(e) => why.push(match std::error::Error::source(&e) {
                Some(detail) => format!("{name}: {detail}"),
                None => format!("{name}: {e}"),
            }),
        }
    }
    Err(format!(
        "cannot load NCCL ({}): install it (e.g. `pip install nvidia-nccl-cu13`, then put its nvidia/nccl/lib on LD_LIBRARY_PATH) or set SIMPLEX_NCCL_LIB=/path/to/libnccl.so.2",
        why.join("; ")
    ))
}

/// SAFETY: the signatures are NCCL's (nccl.h, 2.x; enums are C ints).
unsafe fn bind(lib: Library) -> std::result::Result<Api, libloading::Error> {
    Ok(Api {
        version: *lib.get("ncclGetVersion")?,
        unique_id: *lib.get("ncclGetUniqueId")?,
        init_rank: *lib.get("ncclCommInitRank")?,
        all_reduce: *lib.get("ncclAllReduce")?,
        broadcast: *lib.get("ncclBroadcast")?,
        async_error: *lib.get("ncclCommGetAsyncError")?,
        abort: *lib.get("ncclCommAbort")?,
        error_string: *lib.get("ncclGetErrorString")?,
        last_error: lib.get("ncclGetLastError").ok().map(|s| *s),
        _lib: lib,
    })
}

fn api(rank: usize) -> Result<&'static Api> {
    API.get_or_init(load)
        .as_ref()
        .map_err(|e| TrainError::distributed(rank, e.clone()))
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: NCCL returns NUL-terminated static or per-communicator strings
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// NCCL's words for result `rc` (and its last error message on `comm`).
fn describe(api: &Api, rc: c_int, comm: RawComm) -> String {
    // SAFETY: both take any value / a live communicator (or null)
    let what = cstr(unsafe { (api.error_string)(rc) });
    let last = match (api.last_error, comm.is_null()) {
        (Some(f), false) => cstr(unsafe { f(comm) }),
        _ => String::new(),
    };
    if last.is_empty() {
        format!("NCCL error {rc}: {what}")
    } else {
        format!("NCCL error {rc}: {what} ({last})")
    }
}

/// The NCCL version as `major.minor.patch` (loads NCCL).
pub fn version() -> Result<String> {
    let api = api(0)?;
    let mut v: c_int = 0;
    // SAFETY: writes one int
    let rc = unsafe { (api.version)(&mut v) };
    if rc != SUCCESS {
        return Err(TrainError::distributed(
            0,
            describe(api, rc, std::ptr::null_mut()),
        ));
    }
    // 2.x encodes major * 10000 + minor * 100 + patch
    Ok(format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100))
}

/// A fresh NCCL unique id (rank 0 makes it; the rendezvous hands it to the other ranks).
pub fn unique_id() -> Result<Vec<u8>> {
    let api = api(0)?;
    let mut id = UniqueId { internal: [0; 128] };
    // SAFETY: writes 128 bytes
    let rc = unsafe { (api.unique_id)(&mut id) };
    if rc != SUCCESS {
        return Err(TrainError::distributed(
            0,
            describe(api, rc, std::ptr::null_mut()),
        ));
    }
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

struct Shared {
    comm: RawComm,
    rank: usize,
    timeout: Duration,
    start: Instant,
    last_ms: AtomicU64,
    done: AtomicBool,
}

// SAFETY: an NCCL communicator may be used from several threads for the calls made here (the
// watchdog only queries its error state and aborts it)
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    fn since_start_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// Prints why, aborts the communicator (giving up on that after 10 s) and ends the process.
fn fatal(shared: &Arc<Shared>, api: &'static Api, why: &str) -> ! {
    eprintln!(
        "error: rank {}: {why}; aborting NCCL and ending this rank",
        shared.rank
    );
    let s = shared.clone();
    // SAFETY: aborting a live communicator; the process ends right after
    let h = std::thread::spawn(move || unsafe { (api.abort)(s.comm) });
    let t0 = Instant::now();
    while !h.is_finished() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::process::exit(1)
}

/// One rank's NCCL communicator (see the module doc).
pub struct NcclComm {
    rank: usize,
    world: usize,
    device: Device,
    api: &'static Api,
    shared: Arc<Shared>,
    watchdog: Option<JoinHandle<()>>,
}

impl NcclComm {
    /// Joins the communicator of `world` ranks with rank 0's `id` ([`unique_id`]) on `device`
    /// (CUDA); returns once every rank has joined, or ends the process after `timeout`.
    pub fn init(
        device: &Device,
        rank: usize,
        world: usize,
        id: &[u8],
        timeout: Duration,
    ) -> Result<NcclComm> {
        let err = |m: String| TrainError::distributed(rank, m);
        let Device::Cuda(cd) = device else {
            return Err(err(format!(
                "NCCL needs a CUDA device, not {:?}",
                device.location()
            )));
        };
        let api = api(rank)?;
        if id.len() != 128 {
            return Err(err(format!(
                "an NCCL id has 128 bytes, rank 0 sent {}",
                id.len()
            )));
        }
        let mut uid = UniqueId { internal: [0; 128] };
        for (d, s) in uid.internal.iter_mut().zip(id) {
            *d = *s as c_char;
        }
        cd.cuda_stream()
            .context()
            .bind_to_thread()
            .map_err(|e| err(format!("binding the CUDA context: {e}")))?;
        let joined = Arc::new(AtomicBool::new(false));
        let j = joined.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while t0.elapsed() < timeout {
                if j.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!(
                "error: rank {rank}: NCCL did not connect the {world} ranks within {} s (a rank missing or stuck?); ending this rank",
                timeout.as_secs_f64()
            );
            std::process::exit(1)
        });
        let mut comm: RawComm = std::ptr::null_mut();
        // SAFETY: writes the communicator; blocks until all ranks joined
        let rc = unsafe { (api.init_rank)(&mut comm, world as c_int, uid, rank as c_int) };
        joined.store(true, Ordering::SeqCst);
        if rc != SUCCESS {
            return Err(err(format!(
                "joining the NCCL communicator: {}",
                describe(api, rc, comm)
            )));
        }
        let shared = Arc::new(Shared {
            comm,
            rank,
            timeout,
            start: Instant::now(),
            // not armed until the first progress (setup may take long on rank 0)
            last_ms: AtomicU64::new(u64::MAX),
            done: AtomicBool::new(false),
        });
        let s = shared.clone();
        let watchdog = std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            if s.done.load(Ordering::SeqCst) {
                return;
            }
            let mut e: c_int = SUCCESS;
            // SAFETY: a live communicator (Drop stops this thread before aborting it)
            let rc = unsafe { (api.async_error)(s.comm, &mut e) };
            if rc != SUCCESS || (e != SUCCESS && e != IN_PROGRESS) {
                // the job may be ending: other ranks abort their communicators as they exit
                std::thread::sleep(Duration::from_secs(2));
                if s.done.load(Ordering::SeqCst) {
                    return;
                }
                let code = if rc != SUCCESS { rc } else { e };
                fatal(
                    &s,
                    api,
                    &format!(
                        "NCCL reports {} (a rank died or its connection broke)",
                        describe(api, code, s.comm)
                    ),
                );
            }
            let idle = s
                .since_start_ms()
                .saturating_sub(s.last_ms.load(Ordering::SeqCst));
            if idle > s.timeout.as_millis() as u64 {
                fatal(&s, api, &format!(
                    "no progress for {} s: a collective waits for a rank that died or hangs (--ddp-timeout raises the limit when evals or checkpoints take longer)",
                    s.timeout.as_secs_f64()
                ));
            }
        });
        Ok(NcclComm {
            rank,
            world,
            device: device.clone(),
            api,
            shared,
            watchdog: Some(watchdog),
        })
    }

    fn run(&self, t: &Tensor, kind: Kind) -> Result<()> {
        if !t.device().is_cuda() || t.dtype() != DType::F32 {
            return Err(TrainError::distributed(
                self.rank,
                format!(
                    "NCCL collectives take f32 CUDA tensors, got {:?} on {:?}",
                    t.dtype(),
                    t.device().location()
                ),
            ));
        }
        t.inplace_op1(&NcclOp { comm: self, kind })
            .map_err(|e| TrainError::distributed(self.rank, e.to_string()))
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Reduce(c_int),
    Broadcast,
}

struct NcclOp<'a> {
    comm: &'a NcclComm,
    kind: Kind,
}

impl InplaceOp1 for NcclOp<'_> {
    fn name(&self) -> &'static str {
        "nccl-collective"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("NCCL collectives take CUDA tensors")
    }

    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> candle_core::Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL: the tensor is not contiguous")
        };
        let stream = s.device().cuda_stream();
        let slice = s.as_cuda_slice_mut::<f32>()?;
        let (base, _record) = slice.device_ptr_mut(&stream);
        let p = (base + (a * 4) as u64) as *mut c_void;
        let raw = stream.cu_stream() as RawStream;
        let (api, comm) = (self.comm.api, self.comm.shared.comm);
        // SAFETY: p points at b - a f32s of this device, written in place in stream order
        let rc = unsafe {
            match self.kind {
                Kind::Reduce(op) => (api.all_reduce)(p, p, b - a, FLOAT32, op, comm, raw),
                Kind::Broadcast => (api.broadcast)(p, p, b - a, FLOAT32, 0, comm, raw),
            }
        };
        if rc != SUCCESS {
            candle_core::bail!("{}", describe(api, rc, comm))
        }
        Ok(())
    }
}

impl Collective for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn device(&self) -> Device {
        self.device.clone()
    }
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        let op = match op {
            ReduceOp::Sum => SUM,
            ReduceOp::Max => MAX,
        };
        self.run(t, Kind::Reduce(op))
    }
    fn broadcast(&self, t: &Tensor) -> Result<()> {
        self.run(t, Kind::Broadcast)
    }
    fn progress(&self) {
        self.shared
            .last_ms
            .store(self.shared.since_start_ms(), Ordering::SeqCst);
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        self.shared.done.store(true, Ordering::SeqCst);
        if let Some(h) = self.watchdog.take() {
            let _ = h.join();
        }
        // SAFETY: the watchdog has stopped; nothing uses the communicator after this
        unsafe { (self.api.abort)(self.shared.comm) };
    }
}

#[cfg(test)]
mod tests {
    /// Without NCCL where it is looked for, the error names the file and what to do.
    #[test]
    fn a_missing_nccl_says_what_to_do() {
        // no other test of this binary reads the variable or loads NCCL
        std::env::set_var("SIMPLEX_NCCL_LIB", "/no/such/libnccl.so.2");
        let e = super::version().unwrap_err().to_string();
        assert!(
            e.contains("/no/such/libnccl.so.2") && e.contains("SIMPLEX_NCCL_LIB"),
            "{e}"
        );
        let e = super::unique_id().unwrap_err().to_string();
        assert!(e.contains("cannot load NCCL"), "{e}");
    }
}
