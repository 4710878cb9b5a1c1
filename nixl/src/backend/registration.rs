//! Registering local memory (`registerMem`, `deregisterMem`) and the metadata peers load
//! (`getPublicData`, `loadRemoteMD`, `loadLocalMD`, `unloadMD`).

use tcpx_core::mem::MemKind;

use crate::blob;
use crate::error::{Arg, Error};
use crate::registry::{mem_name, random_key, MdId, Region, Span};
use crate::xfer::Desc;

use super::{lock, mem_kind, read, vram_supported, write, Backend, MAX_REGION_BYTES};

impl Backend {
    /// `registerMem`: records one contiguous local region under a fresh random key.
    pub fn register_mem(&self, desc: &Desc, mem: i32) -> Result<MdId, Error> {
        let mem = mem_kind(mem)?;
        let span = Span::new(desc.addr, desc.len)
            .ok_or_else(|| Error::invalid(Arg::Descs, "region wraps around the address space"))?;
        if desc.len > MAX_REGION_BYTES {
            return Err(Error::invalid(
                Arg::Descs,
                format!(
                    "a region of {} bytes: at most {MAX_REGION_BYTES} (2^48, the most the engine \
                     moves in one piece) can be registered",
                    desc.len
                ),
            ));
        }
        let device = match mem {
            MemKind::Host => 0,
            MemKind::Device => u32::try_from(desc.dev_id)
                .ok()
                .filter(|&d| d <= i32::MAX as u32)
                .ok_or_else(|| Error::invalid(Arg::Descs, "device id out of range"))?,
        };
        let region = Region {
            span,
            mem,
            device,
            key: random_key(),
        };
        let other_gpu = |gpu: u32| {
            let why = if self.config.gpu.is_some() {
                "the backend parameter gpu, else TCPX_GPU, else the CUDA device current when \
                 the backend was created"
            } else {
                "its first VRAM registration"
            };
            Error::invalid(
                Arg::Descs,
                format!(
                    "VRAM on device {device}, but this agent's GPU is device {gpu} ({why}): the \
                     backend drives one GPU per agent; create an agent per GPU, each with its \
                     gpu parameter"
                ),
            )
        };
        // Cheap checks first: the agent's GPU, then what the CUDA driver knows of the memory
        // (kind, GPU, length): a transfer into a wrong one would write outside it or kill the
        // CUDA context.
        if let Some(&gpu) = self
            .gpu
            .get()
            .filter(|&&g| mem == MemKind::Device && g != device)
        {
            return Err(other_gpu(gpu));
        }
        // The same range, memory and device registered again is the same registration, counted
        // once more: one token, so peers load the agent's metadata however often it lists it.
        {
            let mut table = write(&self.mem);
            if table.find(&region).is_some() {
                return Ok(table.register(region));
            }
        }
        let memory = match mem {
            MemKind::Host => tcpx::engine::Memory::Host,
            MemKind::Device => tcpx::engine::Memory::Cuda {
                device: device as i32,
            },
        };
        // Without a CUDA driver host memory needs no check (and the driver probe is cached in
        // `vram_supported`, not repeated per call); a region of no bytes has nothing to check.
        if desc.len > 0 && (mem == MemKind::Device || vram_supported()) {
            tcpx::engine::check_registration(desc.addr, desc.len, memory)
                .map_err(|e| Error::invalid(Arg::Descs, e.to_string()))?;
        }
        if mem == MemKind::Device {
            // Two first registrations racing: one device wins, the other is refused.
            let gpu = *self.gpu.get_or_init(|| device);
            if gpu != device {
                return Err(other_gpu(gpu));
            }
            self.remote.open_copier(device);
        }
        // Each peer session registers it at its first use there, so registering costs the
        // same however many peers are connected.
        Ok(write(&self.mem).register(region))
    }

    /// `deregisterMem`: one count of the registration goes; the last releases it everywhere.
    pub fn deregister_mem(&self, md: MdId) -> Result<(), Error> {
        let mut table = write(&self.mem);
        if table.deregister(md)?.is_some() {
            self.remote.deregister(md);
        }
        Ok(())
    }

    /// `getPublicData`: the region token peers load with `loadRemoteMD`.
    pub fn public_data(&self, md: MdId) -> Result<Vec<u8>, Error> {
        let token = read(&self.mem).token(md)?;
        blob::encode_token(&token)
    }

    /// `loadRemoteMD`: validates a peer's region token against the descriptor NIXL pairs it
    /// with.
    pub fn load_remote_md(
        &self,
        desc: &Desc,
        token: &[u8],
        mem: i32,
        agent: &str,
    ) -> Result<MdId, Error> {
        if agent == &*self.agent {
            return Err(Error::invalid(Arg::Agent, "remote metadata from ourselves"));
        }
        if !lock(&self.peers).contains_key(agent) {
            return Err(Error::UnknownAgent(agent.to_owned()));
        }
        let kind = mem_kind(mem)?;
        let token = blob::decode_token(token)?;
        if token.mem != kind {
            return Err(Error::Mismatch(format!(
                "token of {} memory loaded as {}",
                mem_name(token.mem),
                mem_name(kind)
            )));
        }
        // A parsed token's range never wraps; were it to, nothing would be inside it.
        let inside =
            Span::new(token.base, token.len).is_some_and(|span| span.contains(desc.addr, desc.len));
        if !inside {
            return Err(Error::Mismatch(format!(
                "descriptor [{:#x}, +{}) not inside token [{:#x}, +{})",
                desc.addr, desc.len, token.base, token.len
            )));
        }
        Ok(write(&self.mem).load_remote(agent, token))
    }

    /// `loadLocalMD`: the target-side handle for transfers to ourselves.
    pub fn load_local_md(&self, md: MdId) -> Result<MdId, Error> {
        write(&self.mem).load_local(md)
    }

    /// `unloadMD`.
    pub fn unload_md(&self, md: MdId) -> Result<(), Error> {
        write(&self.mem).unload(md)
    }

    /// Live metadata handles (for leak checks).
    pub fn live_metadata(&self) -> usize {
        read(&self.mem).len()
    }
}
