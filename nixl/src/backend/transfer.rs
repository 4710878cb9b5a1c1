//! Transfer requests: `prepXfer`, `postXfer` (copies to ourselves done here), `checkXfer`,
//! `releaseReqH` and `estimateXferCost`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Arg, Error, Status};
use crate::remote::RemoteXfer;
use crate::xfer::{self, Desc, Op};

use super::{lock, mem_kind, read, Backend, ReqId};
use crate::registry::MEM_VRAM;

/// One transfer request as `prepXfer` / `postXfer` see it.
#[derive(Debug, Clone, Copy)]
pub struct XferArgs<'a> {
    /// READ or WRITE.
    pub op: Op,
    /// Our side.
    pub local: &'a [Desc],
    /// `nixl_mem_t` of the local list.
    pub local_mem: i32,
    /// The target side.
    pub remote: &'a [Desc],
    /// `nixl_mem_t` of the remote list.
    pub remote_mem: i32,
    /// Target agent (may be ourselves).
    pub agent: &'a str,
    /// Notification to deliver to the target when the transfer completes.
    pub notif: Option<&'a [u8]>,
}

#[derive(Debug)]
enum Route {
    /// A transfer to ourselves; done synchronously by `postXfer`.
    Own { posted: bool },
    /// A transfer to another agent, driven by the engine.
    Remote(RemoteXfer),
}

#[derive(Debug)]
struct Request {
    op: Op,
    agent: String,
    route: Route,
}

/// The request handles. The table's lock is held only to find a request; each request has
/// its own lock, held through its post or check, so a post that first opens a conn (a
/// handshake: up to `timeout_ms`) holds up no other request.
#[derive(Debug, Default)]
pub(super) struct Requests {
    last: ReqId,
    map: HashMap<ReqId, Arc<Mutex<Request>>>,
}

impl Requests {
    fn get(&self, id: ReqId) -> Result<Arc<Mutex<Request>>, Error> {
        self.map
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::invalid(Arg::Request, format!("unknown request handle {id:#x}")))
    }
}

impl Backend {
    fn check_args(&self, a: &XferArgs<'_>) -> Result<(), Error> {
        mem_kind(a.local_mem)?;
        mem_kind(a.remote_mem)?;
        match a.notif {
            Some(n) => self.check_notif(a.agent, n),
            None => Ok(()),
        }
    }

    /// `prepXfer`: validates the request completely and returns its handle.
    pub fn prep_xfer(&self, a: &XferArgs<'_>) -> Result<ReqId, Error> {
        self.check_args(a)?;
        let route = if a.agent == &*self.agent {
            // Transfers to ourselves are copies: by the CPU between host memories, else by the
            // copier of the device involved.
            let segments = xfer::plan(&read(&self.mem), &self.agent, a.agent, a.local, a.remote)?;
            if segments
                .iter()
                .filter_map(xfer::Segment::own_device)
                .any(|d| self.remote.copier(d).is_none())
            {
                return Err(Error::UnsupportedMem(MEM_VRAM));
            }
            Route::Own { posted: false }
        } else {
            let peer = self.peer_info(a.agent)?;
            let table = read(&self.mem);
            let segments = xfer::plan(&table, &self.agent, a.agent, a.local, a.remote)?;
            drop(table);
            Route::Remote(self.remote.prepare(a.op, a.agent, &peer, segments)?)
        };
        let mut reqs = lock(&self.requests);
        reqs.last += 1;
        let id = reqs.last;
        reqs.map.insert(
            id,
            Arc::new(Mutex::new(Request {
                op: a.op,
                agent: a.agent.to_owned(),
                route,
            })),
        );
        Ok(id)
    }

    /// `postXfer`: starts (for ourselves: performs) a prepared request; `*handle == 0` prepares
    /// first. May be called again on a completed request to repeat it.
    pub fn post_xfer(&self, a: &XferArgs<'_>, handle: &mut ReqId) -> Result<Status, Error> {
        self.check_args(a)?;
        if *handle == 0 {
            *handle = self.prep_xfer(a)?;
        }
        let req = lock(&self.requests).get(*handle)?;
        let mut req = lock(&req);
        if req.op != a.op || req.agent != a.agent {
            return Err(Error::invalid(
                Arg::Request,
                "request was prepared for another operation or agent",
            ));
        }
        match &mut req.route {
            Route::Remote(x) => {
                let peer = self.peer_info(a.agent)?;
                return self.remote.post(a.agent, &peer, x, a.notif);
            }
            // A repost that fails must not leave the previous post's SUCCESS standing.
            Route::Own { posted } => *posted = false,
        }
        // Only this request is locked during the copy, so transfers to ourselves run in
        // parallel under NIXL's RW sync mode.
        let started = std::time::Instant::now();
        let copied = {
            // Revalidate under the metadata table's read lock and copy while holding it, so no
            // registration can be dropped between the check and the copy.
            // The check allocates nothing (no segment list), so reposts stay off the heap.
            let table = read(&self.mem);
            // SAFETY: the function checks every segment to lie inside a live registration
            // before copying (device memory with its device's copier); the read guard keeps
            // them live.
            unsafe {
                xfer::revalidate_and_copy_own(&table, &self.agent, a.op, a.local, a.remote, |d| {
                    self.remote.copier(d)
                })
            }
        };
        copied?;
        self.own_cost
            .observe(a.local.iter().map(|d| d.len).sum(), started.elapsed());
        // Queued whatever the bound (our own application takes it, it cannot wait for itself).
        if let Some(msg) = a.notif {
            lock(&self.notifs).push_own(self.agent.clone(), msg.to_vec());
        }
        req.route = Route::Own { posted: true };
        Ok(Status::Success)
    }

    /// `checkXfer`.
    pub fn check_xfer(&self, handle: ReqId) -> Result<Status, Error> {
        let req = lock(&self.requests).get(handle)?;
        let mut req = lock(&req);
        match &mut req.route {
            Route::Own { posted: true } => Ok(Status::Success),
            Route::Own { posted: false } => Err(Error::NotPosted),
            Route::Remote(x) => self.remote.check(x),
        }
    }

    /// `releaseReqH`: never blocks; an in-flight remote transfer is aborted.
    pub fn release_req(&self, handle: ReqId) -> Result<(), Error> {
        let req = lock(&self.requests).map.remove(&handle).ok_or_else(|| {
            Error::invalid(Arg::Request, format!("unknown request handle {handle:#x}"))
        })?;
        // Waits only for a call another thread is making on this very handle.
        let route = std::mem::replace(&mut lock(&req).route, Route::Own { posted: false });
        if let Route::Remote(x) = route {
            self.remote.abort(x);
        }
        Ok(())
    }

    /// Live request handles (for leak checks).
    pub fn live_requests(&self) -> usize {
        lock(&self.requests).map.len()
    }

    /// `estimateXferCost`: expected duration and margin of a transfer of `bytes` to `agent`
    /// (or of the prepared request `handle`, when not 0), from what this agent's transfers
    /// cost so far: a latency and a throughput, each a moving average, for transfers to peers
    /// and for copies to ourselves.
    pub fn estimate_xfer_cost(
        &self,
        agent: &str,
        bytes: u64,
        handle: ReqId,
    ) -> Result<(std::time::Duration, std::time::Duration), Error> {
        let bytes = match handle {
            0 => bytes,
            h => {
                let req = lock(&self.requests).get(h)?;
                let req = lock(&req);
                match &req.route {
                    Route::Remote(x) => x.bytes(),
                    Route::Own { .. } => bytes,
                }
            }
        };
        if agent == &*self.agent {
            return Ok(self.own_cost.estimate(bytes));
        }
        self.peer_info(agent)?;
        Ok(self.remote.cost().estimate(bytes))
    }
}
