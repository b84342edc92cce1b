//! Unit generators and OnFailure= with init as PID 1, as Kata's composable
//! guest images use them: a generator (installed in
//! /usr/lib/systemd/system-generators) links one instance of the template
//! `kata-extension-mount@.service` per extension named on the kernel command
//! line into `kata-containers.target.wants/`; the instance runs before the
//! agent's stand-in (`Before=`), only when the command line names it
//! (`ConditionKernelCommandLine=kata.extension.%i.verity_params`), and its
//! failure powers the guest off (`OnFailure=poweroff.target`) before the
//! agent starts (docs/units.md, "Generators", "OnFailure=").

use std::time::Duration;

use minos_tests::Rootfs;

const SIGINT: i32 = 2;
const WAIT: Duration = Duration::from_secs(60);

fn extension_tree(name: &str) -> Rootfs {
    let fs = Rootfs::new(name);
    let usr = |unit: &str, text: &str| fs.write(&format!("usr/lib/systemd/system/{unit}"), text);
    std::fs::create_dir_all(fs.root.join("usr/lib/systemd/system-generators")).unwrap();
    std::os::unix::fs::symlink(
        "/bin/probe",
        fs.root
            .join("usr/lib/systemd/system-generators/extension-generator"),
    )
    .unwrap();
    // systemd's own generators are not run.
    std::os::unix::fs::symlink(
        "/bin/probe",
        fs.root
            .join("usr/lib/systemd/system-generators/systemd-fstab-generator"),
    )
    .unwrap();
    usr("kata-containers.target", "[Unit]\nRequires=agent.service\n");
    usr(
        "kata-extension-mount@.service",
        "[Unit]\nDescription=Mount Kata guest extension image %i\nDefaultDependencies=no\n\
         Before=agent.service\nAfter=local-fs-pre.target\n\
         ConditionKernelCommandLine=kata.extension.%i.verity_params\n\
         OnFailure=poweroff.target\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/bin/probe append /data/order mount-%i\n\
         [Install]\nWantedBy=kata-containers.target\n",
    );
    // The "bad" extension cannot be mounted.
    fs.write(
        "usr/lib/systemd/system/kata-extension-mount@bad.service.d/fail.conf",
        "[Service]\nExecStart=\nExecStart=/bin/probe exit 1\n",
    );
    usr(
        "agent.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe append /data/order agent\n\
         SuccessAction=poweroff\n",
    );
    fs
}

#[test]
fn a_generated_instance_runs_before_the_agent() {
    let fs = extension_tree("generators");
    let words = "kata.extension.coco.verity_params=0123abcd";
    let end = fs
        .start_with_kernel_cmdline(words, &["systemd.unit=kata-containers.target", words])
        .wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    let order: Vec<String> = fs
        .read("data/order")
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(order, ["mount-coco", "agent"], "{}", end.output);
    assert_eq!(
        fs.read("data/generator-args"),
        "/run/systemd/generator /run/systemd/generator.early /run/systemd/generator.late"
    );
    end.assert_log("generator extension-generator ran in ");
    assert!(
        !end.output.contains("systemd-fstab-generator"),
        "systemd's own generator ran: {}",
        end.output
    );
}

#[test]
fn a_failed_extension_powers_off_before_the_agent_starts() {
    let fs = extension_tree("generators-fail");
    let words = "kata.extension.bad.verity_params";
    let end = fs
        .start_with_kernel_cmdline(words, &["systemd.unit=kata-containers.target", words])
        .wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    end.assert_log("kata-extension-mount@bad.service: OnFailure=poweroff.target: poweroff");
    assert!(
        fs.try_read("data/order").is_none(),
        "the agent started after a failed extension: {}",
        end.output
    );
}

#[test]
fn on_failure_starts_its_unit_only_when_the_unit_fails() {
    let fs = Rootfs::new("on-failure");
    fs.unit(
        "fails.service",
        "[Unit]\nOnFailure=report.service\n\
         [Service]\nType=oneshot\nExecStart=/bin/probe exit 3\n",
    );
    fs.unit(
        "succeeds.service",
        "[Unit]\nOnFailure=never.service\n\
         [Service]\nType=oneshot\nExecStart=/bin/probe append /data/ran succeeds\n",
    );
    // Kept at boot (read with the units naming them), started by a failure.
    fs.unit(
        "report.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe append /data/ran report\n\
         SuccessAction=poweroff\n",
    );
    fs.unit(
        "never.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe append /data/ran never\n",
    );
    // With no unit named, every unit of /etc/minos/units is a boot unit:
    // a target names the two, so that report and never are only theirs.
    fs.unit(
        "app.target",
        "[Unit]\nWants=fails.service succeeds.service\n",
    );
    let end = fs.start(&["systemd.unit=app.target"]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    let ran: Vec<String> = fs
        .read("data/ran")
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    assert!(
        ran.contains(&"report".to_string()),
        "{ran:?}\n{}",
        end.output
    );
    assert!(ran.contains(&"succeeds".to_string()), "{ran:?}");
    assert!(!ran.contains(&"never".to_string()), "{ran:?}");
    assert_eq!(ran.iter().filter(|r| *r == "report").count(), 1, "{ran:?}");
    end.assert_log("fails.service: OnFailure=: starting report.service");
}
