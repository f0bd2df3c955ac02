//! The benchmark references (`bench_limit`, `bench_limit_map`,
//! `bench_limit_rewrite`), loaded privately and attached only by the
//! benchmark, to the host-side veths of a two-pod topology the benchmark
//! made itself; never pinned, so they detach when this is dropped (or the
//! process holding it exits). vethctl never loads them: they redirect
//! every frame unchecked.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use aya::{
    maps::{DevMapHash, HashMap, PerCpuArray},
    programs::{tc::TcAttachType, SchedClassifier},
    Ebpf, EbpfLoader,
};
use veth_common::{
    names::{
        GLOBAL_BENCH_HOST_A, GLOBAL_BENCH_HOST_B, MAP_BENCH_FRAMES, MAP_BENCH_PEERS,
        MAP_BENCH_ROUTES, MAP_DEVMAP, PROG_BENCH_LIMIT, PROG_BENCH_LIMIT_MAP,
        PROG_BENCH_LIMIT_REWRITE,
    },
    BenchRoute,
};

use super::{
    lab::{run, RunResult},
    program, OBJECT,
};

/// Which reference program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// Only `bpf_redirect_peer` to the other pod.
    Limit,
    /// The same plus one hash lookup and one per-CPU counter.
    LimitMap,
    /// limit+map plus the headers read, the MACs and TTL rewritten, the
    /// MTU test and the `DEVMAP` proof: a local redirect that routes,
    /// without the source's identity and checks.
    LimitRewrite,
}

impl Reference {
    pub const ALL: [Reference; 3] = [
        Reference::Limit,
        Reference::LimitMap,
        Reference::LimitRewrite,
    ];

    /// Its name as a path in the benchmark reports.
    pub fn path(self) -> &'static str {
        match self {
            Reference::Limit => "limit",
            Reference::LimitMap => "limit+map",
            Reference::LimitRewrite => "limit+rewrite",
        }
    }

    pub fn from_path(path: &str) -> Option<Reference> {
        Reference::ALL.into_iter().find(|r| r.path() == path)
    }

    fn program(self) -> &'static str {
        match self {
            Reference::Limit => PROG_BENCH_LIMIT,
            Reference::LimitMap => PROG_BENCH_LIMIT_MAP,
            Reference::LimitRewrite => PROG_BENCH_LIMIT_REWRITE,
        }
    }
}

/// One reference program, loaded for the pods behind host-side veths
/// `host_a` and `host_b` (ifindexes): frames arriving on one are
/// redirected into the other's pod.
pub struct ReferenceProgram {
    ebpf: Ebpf,
    reference: Reference,
    hosts: [u32; 2],
}

impl ReferenceProgram {
    pub fn load(reference: Reference, host_a: u32, host_b: u32) -> Result<ReferenceProgram> {
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_BENCH_HOST_A, &host_a, true)
            .override_global(GLOBAL_BENCH_HOST_B, &host_b, true)
            .load(OBJECT)
            .context("loading the eBPF object (are you root?)")?;
        let mut peers: HashMap<_, u32, u32> = ebpf
            .map_mut(MAP_BENCH_PEERS)
            .context("BENCH_PEERS missing")?
            .try_into()?;
        peers.insert(host_a, host_b, 0)?;
        peers.insert(host_b, host_a, 0)?;
        program::<SchedClassifier>(&mut ebpf, reference.program())?
            .load()
            .with_context(|| format!("loading {}", reference.program()))?;
        let mut program = ReferenceProgram {
            ebpf,
            reference,
            hosts: [host_a, host_b],
        };
        if reference == Reference::LimitRewrite {
            program.add_to_devmap()?;
        }
        Ok(program)
    }

    /// The pods' MACs (`eth0` behind `host_a`, behind `host_b`), which
    /// `limit+rewrite` writes into the frames it redirects: as the
    /// destination MAC of frames to that pod, as the source MAC of frames
    /// from it. Until this is called it routes nothing (every frame
    /// continues to the host stack, unwritten).
    pub fn set_pod_macs(&mut self, macs: [[u8; 6]; 2]) -> Result<()> {
        let mut routes: HashMap<_, u32, BenchRoute> = self
            .ebpf
            .map_mut(MAP_BENCH_ROUTES)
            .context("BENCH_ROUTES missing")?
            .try_into()?;
        for from in 0..2 {
            let to = 1 - from;
            let route = BenchRoute {
                target_ifindex: self.hosts[to],
                dst_mac: macs[to],
                src_mac: macs[from],
            };
            routes.insert(self.hosts[from], route, 0)?;
        }
        Ok(())
    }

    /// `limit+rewrite`'s targets into its own (unpinned) `DEVMAP`, as `up`
    /// adds a pod's veth: the kernel takes the entries out if the devices
    /// go.
    fn add_to_devmap(&mut self) -> Result<()> {
        let mut devmap: DevMapHash<_> = self
            .ebpf
            .map_mut(MAP_DEVMAP)
            .context("DEVMAP missing")?
            .try_into()?;
        for host in self.hosts {
            devmap
                .insert(host, host, None, 0)
                .with_context(|| format!("adding ifindex {host} to the reference's DEVMAP"))?;
        }
        Ok(())
    }

    fn classifier(&self) -> Result<&SchedClassifier> {
        Ok(self
            .ebpf
            .program(self.reference.program())
            .context("reference program missing")?
            .try_into()?)
    }

    /// Attaches it at TCX ingress of `host_veth` (a device of the caller's
    /// namespace) until this is dropped.
    pub fn attach(&mut self, host_veth: &str) -> Result<()> {
        let name = self.reference.program();
        if host_veth.is_empty() {
            bail!("no host-side veth to attach {name} to");
        }
        program::<SchedClassifier>(&mut self.ebpf, name)?
            .attach(host_veth, TcAttachType::Ingress)
            .with_context(|| format!("attaching {name} to {host_veth}"))?;
        Ok(())
    }

    /// The kernel's id of the program, for its run-time statistics.
    pub fn id(&self) -> Result<u32> {
        Ok(self.classifier()?.info()?.id())
    }

    /// Frames `bench_limit_map` or `bench_limit_rewrite` counted, over all
    /// CPUs (0 for `bench_limit`).
    pub fn frames(&self) -> Result<u64> {
        let frames: PerCpuArray<_, u64> = self
            .ebpf
            .map(MAP_BENCH_FRAMES)
            .context("BENCH_FRAMES missing")?
            .try_into()?;
        Ok(frames.get(&0, 0)?.iter().sum())
    }

    /// Runs the program once on `frame` with `BPF_PROG_TEST_RUN` (which
    /// makes it arrive on loopback, ifindex 1): its verdict and the frame
    /// as it left the program.
    pub fn test_run(&self, frame: &[u8]) -> Result<RunResult> {
        run(self.classifier()?, frame, 1)
    }

    /// Runs it `repeat` times on `frame`: its return code and the kernel's
    /// mean time per run (what `program-cost` compares `from_pod` with).
    pub fn timed_run(&self, frame: &[u8], repeat: u32) -> Result<(i32, Duration)> {
        let ran = run(self.classifier()?, frame, repeat)?;
        Ok((ran.verdict, ran.per_run))
    }
}
