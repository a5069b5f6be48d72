//! `netcage doctor`: which tier this machine allows, and why.

use netcage::sandbox::detect;

pub fn doctor() -> anyhow::Result<u8> {
    let facts = detect::facts();
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!(
        "CAP_NET_ADMIN (root path):        {}",
        yes_no(facts.cap_net_admin)
    );
    match &facts.netns {
        Ok(()) => println!("new network namespace:            yes"),
        Err(e) => println!("new network namespace:            no ({e})"),
    }
    match &facts.userns {
        Ok(()) => println!("unprivileged user namespaces:     yes"),
        Err(e) => println!("unprivileged user namespaces:     no ({e})"),
    }
    for knob in detect::userns_knobs() {
        println!("  {knob}");
    }
    let mount_api = detect::mount_api();
    println!(
        "mount API of Linux 5.12+:         {}",
        if mount_api {
            "yes (the filesystem view)"
        } else {
            "no: Tier 1 cannot build its filesystem view; update the kernel"
        }
    );
    let abi = netcage::sandbox::landlock::abi();
    println!(
        "Landlock:                         {}",
        match abi {
            0 => "no (signals are kept in by process groups and the pid namespace only)".into(),
            1..=5 => format!("ABI {abi}: no signal scope (needs ABI 6, Linux 6.12)"),
            _ => format!("ABI {abi}: no signal or ptrace leaves a command"),
        }
    );
    let tier1_possible =
        mount_api && ((facts.cap_net_admin && facts.netns.is_ok()) || facts.userns.is_ok());
    println!(
        "Tier 1 (netns) on this machine:   {}",
        if tier1_possible {
            "available: `netcage run` uses it by default"
        } else {
            "impossible: needs root (CAP_NET_ADMIN) or unprivileged user namespaces, and Linux 5.12+"
        }
    );
    match netcage::sandbox::bpf::tracker() {
        Ok(t) => println!(
            "process attribution:              eBPF (sockops on {}, loaded in {} ms): audit lines name each connection's pid, comm, uid (serve, proxy, run --attribute)",
            t.cgroup.display(),
            t.load_time.as_millis()
        ),
        Err(why) => println!(
            "process attribution:              /proc scan (the eBPF program is not loaded: {why}): audit lines name the exec only"
        ),
    }
    println!(
        "Tier 0 (env):                     available (proxy variables only; programs can bypass it)"
    );
    let data = netcage::datadir::default_dir();
    println!(
        "data dir (key, CA, audit log):    {} ({}; --data-dir DIR chooses another)",
        data.path.display(),
        data.why
    );
    println!(
        "state (trusted keys, trust.json): {}",
        netcage::keytrust::state_dir().display()
    );
    Ok(0)
}
