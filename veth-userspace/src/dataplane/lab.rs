//! A private copy of the programs and their maps, never pinned and never
//! attached, to run on crafted frames with `BPF_PROG_TEST_RUN`: what the
//! checks benchmark measures. Nothing it does reaches a network.
//!
//! In a test run the kernel makes the frame arrive on the loopback device
//! of the caller's namespace, so the pod under test sits behind ifindex 1.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, DevMapHash, HashMap, Map, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use veth_common::{
    ipv4_key,
    names::{
        GLOBAL_CHECKS_ENABLED, GLOBAL_COUNTERS_ENABLED, GLOBAL_REDIRECT_ENABLED, MAP_DEVMAP,
        MAP_ENDPOINTS, MAP_ENDPOINTS6, MAP_ENDPOINT_HINTS, MAP_PAIR_COUNTERS, MAP_PODS, MAP_SLOTS,
        MAP_SLOT_HINTS, PROG_FROM_POD, PROG_XDP_FROM_POD,
    },
    PairCounters,
};

use super::{program, sum_per_cpu, PodEntry, OBJECT};

/// The ifindex frames of a test run arrive on: loopback.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// How the private copy is loaded.
#[derive(Clone, Copy, Debug)]
pub struct LabSettings {
    pub counters: bool,
    pub redirect: bool,
    /// Only a lab may load the programs without their checks.
    pub checks: bool,
}

/// The programs and maps, loaded privately.
pub struct Lab {
    ebpf: Ebpf,
}

impl Lab {
    pub fn load(settings: LabSettings) -> Result<Lab> {
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_COUNTERS_ENABLED, &u8::from(settings.counters), true)
            .override_global(GLOBAL_REDIRECT_ENABLED, &u8::from(settings.redirect), true)
            .override_global(GLOBAL_CHECKS_ENABLED, &u8::from(settings.checks), true)
            .load(OBJECT)
            .context("loading the eBPF object (are you root?)")?;
        program::<SchedClassifier>(&mut ebpf, PROG_FROM_POD)?
            .load()
            .context("loading from_pod")?;
        program::<Xdp>(&mut ebpf, PROG_XDP_FROM_POD)?
            .load()
            .context("loading xdp_from_pod")?;
        Ok(Lab { ebpf })
    }

    /// Makes frames arriving on `ifindex` come from the pod in `slot`.
    pub fn set_sender(&mut self, ifindex: u32, slot: u32) -> Result<()> {
        let mut slots: HashMap<_, u32, u32> = self.map(MAP_SLOTS)?.try_into()?;
        slots.insert(ifindex, slot, 0)?;
        // The hint too, as `up` writes it: the programs' usual way to the
        // slot.
        let mut hints: Array<_, u32> = self.map(MAP_SLOT_HINTS)?.try_into()?;
        hints.set(veth_common::slot_hint_index(ifindex), slot + 1, 0)?;
        Ok(())
    }

    /// Gives `pod` slot `slot` (its identity, endpoints and DEVMAP entry),
    /// ready for redirects. Its `host_ifindex` must be a device of the
    /// caller's namespace (DEVMAP refuses others).
    pub fn add_pod(&mut self, slot: u32, pod: &PodEntry) -> Result<()> {
        let mut pods: Array<_, veth_common::PodIdentity> = self.map(MAP_PODS)?.try_into()?;
        pods.set(slot, pod.identity(), 0)?;
        let mut v4: HashMap<_, u32, veth_common::Endpoint> = self.map(MAP_ENDPOINTS)?.try_into()?;
        v4.insert(ipv4_key(pod.ipv4.octets()), pod.endpoint(slot), 0)?;
        if let Some(v6) = pod.ipv6 {
            let mut v6map: HashMap<_, [u8; 16], veth_common::Endpoint> =
                self.map(MAP_ENDPOINTS6)?.try_into()?;
            v6map.insert(v6.octets(), pod.endpoint(slot), 0)?;
        }
        let mut devmap: DevMapHash<_> = self.map(MAP_DEVMAP)?.try_into()?;
        devmap
            .insert(pod.host_ifindex, pod.host_ifindex, None, 0)
            .map_err(|e| anyhow!("writing DEVMAP: {e}"))?;
        // The hints too, as `up` writes them: the programs' usual way to
        // the destination.
        let mut hints: Array<_, u32> = self.map(MAP_ENDPOINT_HINTS)?.try_into()?;
        hints.set(
            veth_common::endpoint_hint_v4(pod.ipv4.octets()),
            slot + 1,
            0,
        )?;
        if let Some(v6) = pod.ipv6 {
            hints.set(veth_common::endpoint_hint_v6(&v6.octets()), slot + 1, 0)?;
        }
        Ok(())
    }

    /// Runs `from_pod` (TC) on `frame` `repeat` times; the program's
    /// verdict, the frame as it left, and the mean time per run.
    pub fn run_tc(&self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(PROG_FROM_POD)
            .context("from_pod missing")?
            .try_into()?;
        run(prog, frame, repeat)
    }

    /// The same with `xdp_from_pod`.
    pub fn run_xdp(&self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        let prog: &Xdp = self
            .ebpf
            .program(PROG_XDP_FROM_POD)
            .context("xdp_from_pod missing")?
            .try_into()?;
        run(prog, frame, repeat)
    }

    /// A slot's counters, summed over CPUs.
    pub fn counters(&self, slot: u32) -> Result<PairCounters> {
        let map = self
            .ebpf
            .map(MAP_PAIR_COUNTERS)
            .context("PAIR_COUNTERS missing")?;
        let counters: PerCpuArray<_, PairCounters> = PerCpuArray::try_from(map)?;
        Ok(sum_per_cpu(counters.get(&slot, 0)?.iter()))
    }

    fn map(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the object"))
    }
}

/// One test run.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub verdict: i32,
    pub frame_out: Vec<u8>,
    pub per_run: Duration,
}

/// Runs `prog` `repeat` times on `frame` with `BPF_PROG_TEST_RUN`.
pub(super) fn run<P>(prog: &P, frame: &[u8], repeat: u32) -> Result<RunResult>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: repeat.max(1),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    out.truncate(result.data_size_out as usize);
    Ok(RunResult {
        verdict: result.return_value as i32,
        frame_out: out,
        per_run: result.duration,
    })
}
