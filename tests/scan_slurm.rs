//! The Slurm job array of docs/tutorial.md ("Exact scans"), run for real: the test starts a
//! one-node Slurm of its own (munged, slurmctld and slurmd on private sockets, ports and
//! folders), submits `docs/scan.sbatch` as a 3-task array with `sbatch --wait`, merges the parts
//! and compares them with the unsharded scan, then stops every daemon it started.
//!
//! Ignored by default: it needs Debian's `slurm-wlm` and `munge` (not installed by `.ci/run`)
//! and root (the daemons run as the current user, which must be the configured SlurmUser):
//!
//!     apt-get install -y slurm-wlm
//!     cargo test --release --test scan_slurm -- --ignored

mod cli_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::{circuit, root, stderr, stdout};

const TOY: &str = "circuits/toy-seqcont/numerals_template.circuit";

/// Daemons this test started, stopped (by their own process ids) when it ends, pass or fail.
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start(daemons: &mut Daemons, program: &str, args: &[&str], env: &[(&str, &str)]) {
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} starts (is slurm-wlm installed?): {e}"));
    daemons.0.push(child);
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what} within a minute"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs slurm-wlm and munge (apt-get install -y slurm-wlm) and root; run with --ignored"]
fn the_documented_sbatch_array_gives_the_unsharded_scan() {
    let tutorial = std::fs::read_to_string(root().join("docs/tutorial.md")).unwrap();
    let script = std::fs::read_to_string(root().join("docs/scan.sbatch")).unwrap();
    assert!(
        tutorial.contains(&script),
        "docs/tutorial.md shows docs/scan.sbatch verbatim"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    for sub in ["state", "spool", "munge", "parts"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();

    let mut daemons = Daemons(Vec::new());
    // munge: its own key and socket.
    let key = d("munge/munge.key");
    let socket = d("munge/munge.socket");
    let made = Command::new("mungekey")
        .args(["--create", "--keyfile", &key])
        .status()
        .expect("mungekey runs (munge is installed with slurm-wlm)");
    assert!(made.success());
    start(
        &mut daemons,
        "munged",
        &[
            "--foreground",
            "--force",
            "--key-file",
            &key,
            "--socket",
            &socket,
            "--pid-file",
            &d("munge/munged.pid"),
            "--log-file",
            &d("munge/munged.log"),
            "--seed-file",
            &d("munge/munged.seed"),
        ],
        &[],
    );
    wait_for("munged's socket", || Path::new(&socket).exists());

    // Ports of this test's own, away from a system Slurm's 6817/6818.
    let base = 20000 + (std::process::id() % 20000) as u16;
    let conf = format!(
        "ClusterName=citest\nSlurmctldHost={host}\nSlurmUser={user}\nSlurmdUser={user}\n\
         AuthType=auth/munge\nAuthInfo=socket={socket}\nCredType=cred/munge\n\
         StateSaveLocation={state}\nSlurmdSpoolDir={spool}\n\
         SlurmctldPidFile={dir}/slurmctld.pid\nSlurmdPidFile={dir}/slurmd.pid\n\
         SlurmctldLogFile={dir}/slurmctld.log\nSlurmdLogFile={dir}/slurmd.log\n\
         SlurmctldPort={ctld}\nSlurmdPort={slurmd}\n\
         ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSchedulerType=sched/builtin\n\
         SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\n\
         MpiDefault=none\nJobAcctGatherType=jobacct_gather/none\n\
         NodeName={host} CPUs=2 State=UNKNOWN\n\
         PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
        state = d("state"),
        spool = d("spool"),
        dir = dir.path().display(),
        ctld = base,
        slurmd = base + 1,
    );
    let conf_path = d("slurm.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let env = [("SLURM_CONF", conf_path.as_str())];
    start(&mut daemons, "slurmctld", &["-D", "-f", &conf_path], &env);
    start(&mut daemons, "slurmd", &["-D", "-f", &conf_path], &env);
    wait_for("the node to be idle", || {
        Command::new("sinfo")
            .args(["-h", "-o", "%t"])
            .env("SLURM_CONF", &conf_path)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
            .unwrap_or(false)
    });

    // The documented submission, with `circuit` on PATH and the parts in `parts/`.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_circuit")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let out = Command::new("sbatch")
        .args([
            "--wait",
            "--array=1-3",
            "--cpus-per-task=1",
            "-o",
            &d("task-%a.log"),
            root().join("docs/scan.sbatch").to_str().unwrap(),
            root().join(TOY).to_str().unwrap(),
            &d("parts"),
            "--no-cache",
        ])
        .current_dir(dir.path())
        .env("SLURM_CONF", &conf_path)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sbatch: {} {}",
        stdout(&out),
        stderr(&out)
    );
    let parts: Vec<String> = (1..=3)
        .map(|i| d(&format!("parts/part-{i}.json")))
        .collect();
    let mut merge: Vec<&str> = vec!["scan", "--format", "json", "--merge"];
    merge.extend(parts.iter().map(String::as_str));
    let merged = circuit(&merge);
    assert!(merged.status.success(), "{}", stderr(&merged));
    let whole = circuit(&["scan", TOY, "--format", "json", "--no-cache"]);
    assert_eq!(stdout(&merged), stdout(&whole));
    drop(daemons);
}
