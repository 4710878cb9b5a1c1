//! The plugin calls on comms, registrations and requests: listen, connect, accept, regMr,
//! isend, irecv, test, irecvConsumed, iflush and close, each checking that its arguments
//! belong to this plugin and this comm before the call.

use super::*;

impl Net {
    #[inline]
    fn owns(&self, comm: &CommInner) -> Result<()> {
        if Arc::ptr_eq(&comm.plugin, &self.plugin) {
            Ok(())
        } else {
            Err(Error::Invalid("comm belongs to another plugin instance"))
        }
    }

    /// Starts listening on device `dev` (reading its properties once, for `accept`).
    pub fn listen(&self, dev: usize) -> Result<ListenComm> {
        let p = &self.plugin;
        let f = p.table.listen.ok_or_else(|| p.missing("listen"))?;
        let d = dev_index(dev)?;
        let props = self.properties(dev)?;
        let mut handle = ConnectHandle::default();
        let mut comm = ptr::null_mut();
        // SAFETY: `handle` has the 128 bytes the ABI allows; `comm` is an out-pointer.
        let code = p.call("listen", || unsafe {
            f(d, handle.0.as_mut_ptr().cast(), &mut comm)
        });
        p.check("listen", code)?;
        let comm =
            NonNull::new(comm).ok_or(Error::Invalid("listen succeeded without a listen comm"))?;
        Ok(ListenComm {
            inner: CommInner::new(
                p,
                comm,
                Kind::Listen,
                Some(props.device_type),
                ptr::null_mut(),
                None,
            ),
            handle,
            dev,
            device_type: props.device_type,
            device_version: props.device_version,
            pending: None,
            _not_sync: PhantomData,
        })
    }

    /// One non-blocking connect attempt to the peer's `handle`; `Ok(None)` = call again
    /// (with the same `handle`, where the plugin may keep its progress). Like NCCL's send
    /// side, the device-handle argument points to NULL; a handle the plugin sets is kept.
    pub fn connect(&self, dev: usize, handle: &mut ConnectHandle) -> Result<Option<SendComm>> {
        let p = &self.plugin;
        let f = p
            .table
            .connect
            .as_ref()
            .ok_or_else(|| p.missing("connect"))?;
        let d = dev_index(dev)?;
        let mut comm = ptr::null_mut();
        let mut dev_handle: *mut DevHandle = ptr::null_mut();
        let h = handle.0.as_mut_ptr().cast();
        // SAFETY: out-pointers valid for the call; the handle buffer is HANDLE_MAX_SIZE bytes.
        let code = p.call("connect", || unsafe {
            match f {
                Connect::V7(f) => f(d, h, &mut comm, &mut dev_handle),
                Connect::V10(f) => {
                    let mut config = v10::CommConfig {
                        traffic_class: v10::TRAFFIC_CLASS_UNDEF,
                    };
                    f(d, &mut config, h, &mut comm, &mut dev_handle)
                }
            }
        });
        p.check("connect", code)?;
        Ok(NonNull::new(comm).map(|c| SendComm {
            inner: CommInner::new(p, c, Kind::Send, None, dev_handle, None),
            _not_sync: PhantomData,
        }))
    }

    /// One non-blocking accept attempt; `Ok(None)` = the peer is not connected yet.
    ///
    /// On an UNPACK device the plugin gets a pointer to a zeroed device handle with type and
    /// version preset (as NCCL's receive side does; GPUDirect-TCPX fills it in place), the
    /// same one on every retry, owned by the comm once accepted; on a HOST device a pointer
    /// to NULL.
    pub fn accept(&self, listen: &mut ListenComm) -> Result<Option<RecvComm>> {
        self.owns(&listen.inner)?;
        let p = &self.plugin;
        let f = p.table.accept.ok_or_else(|| p.missing("accept"))?;
        let mut storage = match listen.device_type {
            DeviceType::Host => None,
            DeviceType::Unpack => Some(listen.pending.take().unwrap_or_else(|| {
                DevStorage(Box::new(DevHandle {
                    net_device_type: tcpx_core::abi::NET_DEVICE_UNPACK,
                    net_device_version: listen.device_version,
                    handle: ptr::null_mut(),
                    size: 0,
                    needs_proxy_progress: 0,
                }))
            })),
        };
        let mut dev_handle: *mut DevHandle = storage
            .as_mut()
            .map_or(ptr::null_mut(), |h| &mut *h.0 as *mut DevHandle);
        let mut comm = ptr::null_mut();
        let lp = listen.inner.ptr.as_ptr();
        // SAFETY: the listen comm is open; out-pointers are valid for the call, and the
        // handle they may point to lives in `storage` (kept by the listen comm or the new
        // recv comm).
        let code = p.call("accept", || unsafe { f(lp, &mut comm, &mut dev_handle) });
        let Some(c) = NonNull::new(comm).filter(|_| code == tcpx_core::abi::result::SUCCESS) else {
            // Not yet (or failed): the plugin may hold on to the handle, so it stays ours.
            listen.pending = storage;
            p.check("accept", code)?;
            return Ok(None);
        };
        Ok(Some(RecvComm {
            inner: CommInner::new(
                p,
                c,
                Kind::Recv,
                Some(listen.device_type),
                dev_handle,
                storage,
            ),
            _not_sync: PhantomData,
        }))
    }

    /// Registers `size` bytes at `data` on `comm`.
    ///
    /// # Safety
    /// `data..data+size` is memory of `kind` that stays valid until the registration drops.
    pub unsafe fn reg_mr(
        &self,
        comm: &impl Comm,
        data: *mut c_void,
        size: usize,
        kind: MemKind,
    ) -> Result<MemReg> {
        let c = comm.inner();
        self.owns(c)?;
        let p = &self.plugin;
        let f = p.table.reg_mr.as_ref().ok_or_else(|| p.missing("regMr"))?;
        let mut mhandle = ptr::null_mut();
        let cp = c.ptr.as_ptr();
        let ty = ptr_type(kind);
        // `cp` is the open comm that `comm` keeps alive (checked by `owns` to come from this
        // plugin, which `p` keeps loaded); `mhandle` is a local out-pointer; the memory at
        // `data..data+size` is the caller's contract (see `# Safety`).
        let code = match f {
            RegMr::Int(f) => {
                let size = int_size(size)?;
                // SAFETY: as above; `size` was checked to fit this ABI's `int`.
                p.call("regMr", || unsafe { f(cp, data, size, ty, &mut mhandle) })
            }
            RegMr::Size(f) => {
                // SAFETY: as above; this ABI takes the size as `size_t`.
                p.call("regMr", || unsafe { f(cp, data, size, ty, &mut mhandle) })
            }
        };
        p.check("regMr", code)?;
        Ok(self.mem_reg(c, mhandle))
    }

    /// Registers a DMA-BUF range (`fd`, `offset`) mapped at `data` on `comm`.
    ///
    /// # Safety
    /// As for [`Net::reg_mr`]; `fd` is a DMA-BUF file descriptor for that memory.
    pub unsafe fn reg_mr_dma_buf(
        &self,
        comm: &impl Comm,
        data: *mut c_void,
        size: usize,
        kind: MemKind,
        offset: u64,
        fd: i32,
    ) -> Result<MemReg> {
        let c = comm.inner();
        self.owns(c)?;
        let p = &self.plugin;
        let f = p
            .table
            .reg_mr_dma_buf
            .ok_or_else(|| p.missing("regMrDmaBuf"))?;
        let mut mhandle = ptr::null_mut();
        let (cp, ty) = (c.ptr.as_ptr(), ptr_type(kind));
        // SAFETY: `cp` is the open comm that `comm` keeps alive (from this plugin, checked by
        // `owns`); `mhandle` is a local out-pointer; `data`, `size` and `fd` are the caller's
        // contract (see `# Safety`).
        let code = p.call("regMrDmaBuf", || unsafe {
            f(cp, data, size, ty, offset, fd, &mut mhandle)
        });
        p.check("regMrDmaBuf", code)?;
        Ok(self.mem_reg(c, mhandle))
    }

    fn mem_reg(&self, comm: &Arc<CommInner>, mhandle: *mut c_void) -> MemReg {
        MemReg {
            comm: Arc::clone(comm),
            mhandle,
            deregistered: false,
            _not_sync: PhantomData,
        }
    }

    /// Deregisters now, reporting the plugin's answer (dropping does the same silently).
    pub fn dereg_mr(&self, mut mr: MemReg) -> Result<()> {
        self.owns(&mr.comm)?;
        mr.dereg()
    }

    /// The device-side form of a registration (for plugin device code).
    pub fn get_device_mr(&self, mr: &MemReg) -> Result<*mut c_void> {
        self.owns(&mr.comm)?;
        let p = &self.plugin;
        let f = p
            .table
            .get_device_mr
            .ok_or_else(|| p.missing("getDeviceMr"))?;
        let mut dptr = ptr::null_mut();
        // SAFETY: comm and registration are alive; `dptr` is an out-pointer.
        let code = p.call("getDeviceMr", || unsafe {
            f(mr.comm.ptr.as_ptr(), mr.mhandle, &mut dptr)
        });
        p.check("getDeviceMr", code)?;
        Ok(dptr)
    }

    /// Posts a send of `size` bytes at `data`; `Ok(None)` = the plugin is busy, retry.
    ///
    /// # Safety
    /// `data..data+size` lies inside `mr`'s memory and stays untouched until the request
    /// completes.
    #[inline]
    pub unsafe fn isend(
        &self,
        comm: &SendComm,
        data: *mut c_void,
        size: usize,
        tag: i32,
        mr: &MemReg,
    ) -> Result<Option<Request>> {
        let c = &comm.inner;
        self.owns(c)?;
        same_comm(c, mr)?;
        let p = &self.plugin;
        let f = p.table.isend.as_ref().ok_or_else(|| p.missing("isend"))?;
        let mut req = ptr::null_mut();
        let cp = c.ptr.as_ptr();
        let mh = mr.mhandle;
        // `cp` is the open send comm that `comm` keeps alive and `mh` a registration on that
        // same comm (`same_comm`), alive while `mr` is borrowed; `req` is a local out-pointer;
        // the buffer is the caller's contract (see `# Safety`).
        let code = match f {
            Isend::Int(f) => {
                let size = int_size(size)?;
                // SAFETY: as above; `size` was checked to fit this ABI's `int`.
                p.call("isend", || unsafe { f(cp, data, size, tag, mh, &mut req) })
            }
            Isend::Size(f) => {
                // SAFETY: as above; this ABI takes the size as `size_t`.
                p.call("isend", || unsafe { f(cp, data, size, tag, mh, &mut req) })
            }
            Isend::Profiled(f) => {
                // SAFETY: as above; the profiler context may be NULL (no profiler attached).
                p.call("isend", || unsafe {
                    f(cp, data, size, tag, mh, ptr::null_mut(), &mut req)
                })
            }
        };
        p.check("isend", code)?;
        Ok(Request::new(c, req, &[size]))
    }

    /// Posts a grouped receive (1 … `MAX_RECVS` buffers); `Ok(None)` = busy, retry.
    ///
    /// # Safety
    /// Each buffer lies inside its registration and stays untouched until the request
    /// completes (and, for UNPACK devices, until `irecv_consumed`).
    #[inline]
    pub unsafe fn irecv(&self, comm: &RecvComm, bufs: &[RecvBuf<'_>]) -> Result<Option<Request>> {
        let c = &comm.inner;
        self.owns(c)?;
        let mut a = recv_args(c, bufs)?;
        let p = &self.plugin;
        let f = p.table.irecv.as_ref().ok_or_else(|| p.missing("irecv"))?;
        let mut req = ptr::null_mut();
        let cp = c.ptr.as_ptr();
        let mut int_sizes_buf = match f {
            Irecv::Int(_) => int_sizes(&a)?,
            _ => [0; MAX_RECVS],
        };
        let posted = a.sizes;
        // SAFETY: arrays hold `n` valid entries; the buffer contract is the caller's.
        let code = p.call("irecv", || unsafe {
            match f {
                Irecv::Int(f) => f(
                    cp,
                    a.n,
                    a.data.as_mut_ptr(),
                    int_sizes_buf.as_mut_ptr(),
                    a.tags.as_mut_ptr(),
                    a.mhandles.as_mut_ptr(),
                    &mut req,
                ),
                Irecv::Size(f) => f(
                    cp,
                    a.n,
                    a.data.as_mut_ptr(),
                    a.sizes.as_mut_ptr(),
                    a.tags.as_mut_ptr(),
                    a.mhandles.as_mut_ptr(),
                    &mut req,
                ),
                Irecv::Profiled(f) => {
                    let mut phandles = [ptr::null_mut(); MAX_RECVS];
                    f(
                        cp,
                        a.n,
                        a.data.as_mut_ptr(),
                        a.sizes.as_mut_ptr(),
                        a.tags.as_mut_ptr(),
                        a.mhandles.as_mut_ptr(),
                        phandles.as_mut_ptr(),
                        &mut req,
                    )
                }
            }
        });
        p.check("irecv", code)?;
        Ok(Request::new(c, req, &posted[..bufs.len()]))
    }

    /// Posts a flush making received CUDA data visible to the GPU; `Ok(None)` = nothing
    /// to flush or busy (the plugin decides).
    ///
    /// Refused, without calling the plugin, on an UNPACK comm: GPUDirect-TCPX's `iflush`
    /// is not a no-op (it takes its request argument for a request and writes a size
    /// through it), and the unpack kernel reads the data on Hopper with no flush needed.
    ///
    /// # Safety
    /// As for [`Net::irecv`], for buffers whose receive has completed.
    pub unsafe fn iflush(&self, comm: &RecvComm, bufs: &[RecvBuf<'_>]) -> Result<Option<Request>> {
        let c = &comm.inner;
        self.owns(c)?;
        if c.is_unpack() {
            return Err(Error::Unsupported(
                "iflush on an UNPACK (GPUDirect-TCPX) recv comm: TCPX's iflush is not a \
                 no-op, and Hopper needs no flush",
            ));
        }
        let mut a = recv_args(c, bufs)?;
        let p = &self.plugin;
        let f = p.table.iflush.ok_or_else(|| p.missing("iflush"))?;
        let mut sizes = int_sizes(&a)?;
        let mut req = ptr::null_mut();
        let cp = c.ptr.as_ptr();
        // SAFETY: arrays hold `n` valid entries; the buffer contract is the caller's.
        let code = p.call("iflush", || unsafe {
            f(
                cp,
                a.n,
                a.data.as_mut_ptr(),
                sizes.as_mut_ptr(),
                a.mhandles.as_mut_ptr(),
                &mut req,
            )
        });
        p.check("iflush", code)?;
        Ok(Request::new(c, req, &a.sizes[..bufs.len()]))
    }

    /// Polls `req`: `Some(bytes of the first buffer)` once done, `None` while in flight.
    /// Other buffers' sizes are then in [`Request::size`]. A size the plugin did not write
    /// is the posted size (see [`Request::size_reported`]).
    #[inline]
    pub fn test(&self, req: &mut Request) -> Result<Option<usize>> {
        self.owns(&req.comm)?;
        if req.done {
            return Err(Error::Invalid("test on a request that already completed"));
        }
        let p = &self.plugin;
        let f = p.table.test.ok_or_else(|| p.missing("test"))?;
        let mut done: c_int = 0;
        // Preset on every call: a plugin may write sizes on a call that is not yet done.
        req.sizes = [SIZE_UNTOUCHED; MAX_RECVS];
        let (rp, sizes) = (req.ptr.as_ptr(), req.sizes.as_mut_ptr());
        // SAFETY: the request is in flight on an open comm; `sizes` has room for `n`.
        let code = p.call("test", || unsafe { f(rp, &mut done, sizes) });
        p.check("test", code)?;
        if done == 0 {
            return Ok(None);
        }
        req.done = true;
        Ok(Some(req.size(0).unwrap_or(0)))
    }

    /// Tells the plugin the device has consumed a completed receive, so it can recycle the
    /// bounce pages (TCPX). Must follow posting order.
    #[inline]
    pub fn irecv_consumed(&self, comm: &RecvComm, req: Request) -> Result<()> {
        let c = &comm.inner;
        self.owns(c)?;
        if !Arc::ptr_eq(c, &req.comm) {
            return Err(Error::Invalid("irecv_consumed with another comm's request"));
        }
        if !req.done {
            return Err(Error::Invalid("irecv_consumed before test reported done"));
        }
        let p = &self.plugin;
        let f = p
            .table
            .irecv_consumed
            .ok_or_else(|| p.missing("irecvConsumed"))?;
        let (cp, n, rp) = (c.ptr.as_ptr(), c_int::from(req.n), req.ptr.as_ptr());
        // SAFETY: the request completed on this open comm and is handed back exactly once.
        let code = p.call("irecvConsumed", || unsafe { f(cp, n, rp) });
        p.check("irecvConsumed", code)
    }

    /// Whether the plugin implements `irecvConsumed` (TCPX-style plugins do; others
    /// complete a receive at `test`).
    pub fn has_irecv_consumed(&self) -> bool {
        self.plugin.table.irecv_consumed.is_some()
    }

    /// Closes a listen comm now, reporting the plugin's answer.
    pub fn close_listen(&self, comm: ListenComm) -> Result<()> {
        self.close(comm.inner)
    }

    /// Closes a send comm now; fails if registrations or requests still hold it.
    pub fn close_send(&self, comm: SendComm) -> Result<()> {
        self.close(comm.inner)
    }

    /// Closes a receive comm now; fails if registrations or requests still hold it.
    pub fn close_recv(&self, comm: RecvComm) -> Result<()> {
        self.close(comm.inner)
    }

    fn close(&self, inner: Arc<CommInner>) -> Result<()> {
        self.owns(&inner)?;
        match Arc::try_unwrap(inner) {
            Ok(mut c) => c.close(),
            Err(_) => Err(Error::Invalid(
                "close while registrations or requests still use the comm",
            )),
        }
    }
}

#[inline]
fn same_comm(c: &Arc<CommInner>, mr: &MemReg) -> Result<()> {
    if Arc::ptr_eq(c, &mr.comm) {
        Ok(())
    } else {
        Err(Error::Invalid("memory registered on another comm"))
    }
}

#[inline]
fn int_size(size: usize) -> Result<c_int> {
    c_int::try_from(size).map_err(|_| Error::Invalid("size exceeds this ABI's int range"))
}

#[inline]
fn int_sizes(a: &RecvArgs) -> Result<[c_int; MAX_RECVS]> {
    let mut out = [0; MAX_RECVS];
    for (o, &s) in out.iter_mut().zip(&a.sizes[..a.n as usize]) {
        *o = int_size(s)?;
    }
    Ok(out)
}

#[inline]
fn recv_args(c: &Arc<CommInner>, bufs: &[RecvBuf<'_>]) -> Result<RecvArgs> {
    if bufs.is_empty() || bufs.len() > MAX_RECVS {
        return Err(Error::Invalid("a grouped receive takes 1 to 8 buffers"));
    }
    let mut a = RecvArgs {
        n: bufs.len() as c_int,
        data: [ptr::null_mut(); MAX_RECVS],
        sizes: [0; MAX_RECVS],
        tags: [0; MAX_RECVS],
        mhandles: [ptr::null_mut(); MAX_RECVS],
    };
    for (i, b) in bufs.iter().enumerate() {
        same_comm(c, b.mr)?;
        a.data[i] = b.data;
        a.sizes[i] = b.size;
        a.tags[i] = b.tag;
        a.mhandles[i] = b.mr.mhandle;
    }
    Ok(a)
}
