//! The OpenWrt package (src/packaging/openwrt/iot-ota-server): its procd init
//! script run against stand-ins of OpenWrt's shell functions, and its
//! package Makefile run against stand-ins of the build system.
//!
//! The init script is run as its `#!/bin/sh /etc/rc.common` line runs it:
//! `sh rc.common INITSCRIPT ACTION`, with `rc.common`, `functions.sh` (the
//! UCI calls: `config_load`, `config_get`, ...) and `procd.sh` (the procd
//! calls: `procd_open_instance`, `procd_set_param`, ...) written by this
//! test. The procd stand-in records every call; the test then checks the
//! command line and the instance settings each configuration gives, under
//! dash and under BusyBox ash (OpenWrt's /bin/sh), and runs a recorded
//! command line for real. The script itself is not changed for the test.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{run_bounded, TempDir, CLIENT_BIN, SERVER_BIN};

/// Bound on one run of the init script or of `make`.
const SCRIPT_LIMIT: Duration = Duration::from_secs(30);
/// The program the init script starts.
const PROG: &str = "/usr/bin/iot-ota-server";
/// The service's name: the init script's file name.
const SERVICE: &str = "iot-ota-server";
/// Separates the fields of one recorded call (no argument contains it).
const FIELD: char = '\u{1f}';

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/packaging/openwrt/iot-ota-server")
}

fn init_script() -> PathBuf {
    package_dir().join("files/iot-ota-server.init")
}

fn packaged_config() -> String {
    std::fs::read_to_string(package_dir().join("files/iot-ota-server.config"))
        .expect("read files/iot-ota-server.config")
}

// ------------------------------------------------------------ stand-ins

/// OpenWrt's /etc/rc.common, as far as a procd script uses it: the
/// defaults a script may override, the script, then start, stop and
/// reload built on procd's calls (a service opened, the script's
/// instances, its triggers, the service closed).
const RC_COMMON: &str = r#"
shim_dir=$(dirname "$0")
. "$shim_dir/functions.sh"
initscript=$1
action=${2:-help}
shift 2
start_service() { return 0; }
stop_service() { return 0; }
service_triggers() { return 0; }
. "$initscript"
if [ -z "$USE_PROCD" ]; then
	echo "rc.common stand-in: $initscript does not set USE_PROCD" >&2
	exit 1
fi
. "$shim_dir/procd.sh"
service_name=$(basename "$initscript")
rc_procd() {
	procd_open_service "$service_name" "$initscript"
	"$@"
	procd_close_service
}
start() { rc_procd start_service "$@"; }
stop() { stop_service "$@"; procd_kill "$service_name" "$1"; }
reload() {
	if type reload_service >/dev/null 2>&1; then
		reload_service "$@"
	else
		start
	fi
}
"$action" "$@"
"#;

/// UCI's shell API: `config_load NAME` sources `$UCI_CONFIG_DIR/NAME`
/// (UCI's file syntax is shell once `config`, `option` and `list` are
/// functions) into `CONFIG_<section>_<option>` variables. As OpenWrt's: a
/// default replaces an unset or empty value, booleans accept
/// 1/yes/on/true/enabled and their opposites, a list keeps its items in
/// order, and `config_list_foreach` evaluates its callback with the item
/// first.
const FUNCTIONS_SH: &str = r#"
CONFIG_SECTIONS=
CONFIG_ANONYMOUS=0
package() { :; }
config() {
	CONFIG_SECTION=$2
	if [ -z "$CONFIG_SECTION" ]; then
		CONFIG_ANONYMOUS=$((CONFIG_ANONYMOUS + 1))
		CONFIG_SECTION=cfg$CONFIG_ANONYMOUS
	fi
	CONFIG_SECTIONS="$CONFIG_SECTIONS $CONFIG_SECTION"
	eval "CONFIG_${CONFIG_SECTION}_TYPE=\$1"
}
option() {
	eval "CONFIG_${CONFIG_SECTION}_$1=\$2"
}
list() {
	local count
	eval "count=\${CONFIG_${CONFIG_SECTION}_$1_LENGTH:-0}"
	count=$((count + 1))
	eval "CONFIG_${CONFIG_SECTION}_$1_ITEM$count=\$2"
	eval "CONFIG_${CONFIG_SECTION}_$1_LENGTH=$count"
	eval "CONFIG_${CONFIG_SECTION}_$1=\"\${CONFIG_${CONFIG_SECTION}_$1:+\$CONFIG_${CONFIG_SECTION}_$1 }\$2\""
}
config_load() {
	. "$UCI_CONFIG_DIR/$1"
}
config_get() {
	eval "$1=\${CONFIG_$2_$3:-\$4}"
}
config_get_bool() {
	local value
	config_get value "$2" "$3" "$4"
	case "$value" in
	1|on|true|yes|enabled) value=1 ;;
	0|off|false|no|disabled) value=0 ;;
	*) value=$4 ;;
	esac
	eval "$1=\$value"
}
config_foreach() {
	local callback="$1" wanted="$2" section type
	shift 2
	for section in $CONFIG_SECTIONS; do
		eval "type=\$CONFIG_${section}_TYPE"
		if [ "$type" = "$wanted" ]; then
			"$callback" "$section" "$@"
		fi
	done
}
config_list_foreach() {
	local section="$1" option="$2" callback="$3" count item value
	shift 3
	eval "count=\${CONFIG_${section}_${option}_LENGTH:-0}"
	item=1
	while [ "$item" -le "$count" ]; do
		eval "value=\$CONFIG_${section}_${option}_ITEM$item"
		eval "$callback \"\$value\" \"\$@\""
		item=$((item + 1))
	done
}
"#;

/// procd's shell API, recording: one line per call in `$PROCD_RECORD`,
/// its fields separated by \x1f. A call that needs an open instance and
/// has none is recorded as an error, as are unknown parameter types.
const PROCD_SH: &str = r#"
PROCD_INSTANCE_OPEN=
procd_record() {
	local line="$1" field
	shift
	for field in "$@"; do
		line="$line$(printf '\037')$field"
	done
	printf '%s\n' "$line" >>"$PROCD_RECORD"
}
procd_in_instance() {
	if [ -z "$PROCD_INSTANCE_OPEN" ]; then
		procd_record error "$1 outside an instance"
		return 1
	fi
}
procd_open_service() { procd_record service "$1"; }
procd_close_service() {
	service_triggers
	procd_record close_service
}
procd_open_instance() {
	PROCD_INSTANCE_OPEN=1
	procd_record instance "$1"
}
procd_close_instance() {
	procd_in_instance procd_close_instance || return 0
	PROCD_INSTANCE_OPEN=
	procd_record close_instance
}
procd_check_type() {
	case "$1" in
	command|respawn|user|group|stdout|stderr|no_new_privs|env|limits|file|netdev|term_timeout|reload_signal|capabilities|seccomp) ;;
	*) procd_record error "unknown parameter type $1" ;;
	esac
}
procd_set_param() {
	procd_in_instance procd_set_param || return 0
	procd_check_type "$1"
	procd_record set "$@"
}
procd_append_param() {
	procd_in_instance procd_append_param || return 0
	procd_check_type "$1"
	procd_record append "$@"
}
procd_add_jail() {
	procd_in_instance procd_add_jail || return 0
	procd_record jail "$@"
}
procd_add_jail_mount() {
	procd_in_instance procd_add_jail_mount || return 0
	procd_record mount_ro "$@"
}
procd_add_jail_mount_rw() {
	procd_in_instance procd_add_jail_mount_rw || return 0
	procd_record mount_rw "$@"
}
procd_add_reload_trigger() { procd_record reload_trigger "$@"; }
procd_send_signal() { procd_record signal "$@"; }
procd_kill() { procd_record kill "$@"; }
"#;

// ------------------------------------------------------------ recording

/// One instance as procd would get it.
#[derive(Debug, Default)]
struct Instance {
    name: String,
    /// `procd_set_param` replaces a type's values, `procd_append_param`
    /// adds to them.
    params: BTreeMap<String, Vec<String>>,
    /// The jail's name and flags.
    jail: Option<Vec<String>>,
    read_only: Vec<String>,
    read_write: Vec<String>,
}

impl Instance {
    fn command(&self) -> Vec<String> {
        self.params.get("command").cloned().unwrap_or_default()
    }

    fn param(&self, name: &str) -> Option<Vec<String>> {
        self.params.get(name).cloned()
    }
}

/// One `procd_open_service` .. `procd_close_service`.
#[derive(Debug, Default)]
struct Service {
    name: String,
    instances: Vec<Instance>,
    reload_triggers: Vec<String>,
}

/// Every procd call one action made, in order.
#[derive(Debug, Default)]
struct Recording {
    services: Vec<Service>,
    /// `procd_send_signal` arguments, with the number of services
    /// submitted before the signal.
    signals: Vec<(usize, Vec<String>)>,
    /// What the script wrote on stderr.
    stderr: String,
}

impl Recording {
    /// The single service this action submitted.
    fn service(&self) -> &Service {
        assert_eq!(
            self.services.len(),
            1,
            "expected one service submitted: {self:#?}"
        );
        &self.services[0]
    }

    /// The single instance of the single service.
    fn instance(&self) -> &Instance {
        let service = self.service();
        assert_eq!(
            service.instances.len(),
            1,
            "expected one instance: {self:#?}"
        );
        &service.instances[0]
    }
}

fn parse_recording(text: &str, stderr: String) -> Recording {
    let mut recording = Recording {
        stderr,
        ..Recording::default()
    };
    let mut service: Option<Service> = None;
    let mut instance: Option<Instance> = None;
    for line in text.lines() {
        let mut fields = line.split(FIELD).map(str::to_owned);
        let call = fields.next().unwrap_or_default();
        let args: Vec<String> = fields.collect();
        let first = args.first().cloned().unwrap_or_default();
        let rest = args.get(1..).unwrap_or_default().to_vec();
        match call.as_str() {
            "error" => panic!("procd stand-in: {first}; recording:\n{text}"),
            "service" => {
                assert!(service.is_none(), "a service opened inside another");
                service = Some(Service {
                    name: first,
                    ..Service::default()
                });
            }
            "close_service" => {
                assert!(instance.is_none(), "service closed with an instance open");
                recording
                    .services
                    .push(service.take().expect("close_service without a service"));
            }
            "instance" => {
                assert!(service.is_some(), "an instance outside a service");
                assert!(instance.is_none(), "an instance opened inside another");
                instance = Some(Instance {
                    name: first,
                    ..Instance::default()
                });
            }
            "close_instance" => {
                let done = instance.take().expect("close_instance without an instance");
                service
                    .as_mut()
                    .expect("an instance outside a service")
                    .instances
                    .push(done);
            }
            "set" | "append" => {
                let open = instance.as_mut().expect("a parameter outside an instance");
                let values = open.params.entry(first).or_default();
                if call == "set" {
                    values.clear();
                }
                values.extend(rest);
            }
            "jail" => {
                let open = instance.as_mut().expect("a jail outside an instance");
                open.jail = Some(args);
            }
            "mount_ro" | "mount_rw" => {
                let open = instance.as_mut().expect("a jail mount outside an instance");
                // procd drops a mount added before its jail, silently.
                assert!(
                    open.jail.is_some(),
                    "{call} {args:?} before procd_add_jail: procd ignores it"
                );
                if call == "mount_ro" {
                    open.read_only.extend(args);
                } else {
                    open.read_write.extend(args);
                }
            }
            "reload_trigger" => service
                .as_mut()
                .expect("a trigger outside a service")
                .reload_triggers
                .extend(args),
            "signal" => recording.signals.push((recording.services.len(), args)),
            "kill" => {}
            other => panic!("unknown recorded call {other:?} in:\n{text}"),
        }
    }
    assert!(service.is_none(), "a service never closed:\n{text}");
    recording
}

// ------------------------------------------------------------ running

/// The shells the script runs under: dash (Debian's sh) always, and
/// BusyBox ash, OpenWrt's /bin/sh, where BusyBox is installed (required
/// under CI).
fn shells() -> Vec<Vec<&'static str>> {
    let mut shells = vec![vec!["sh"]];
    if support::require_program("busybox") {
        shells.push(vec!["busybox", "ash"]);
    }
    shells
}

/// A directory laid out as the router's: the stand-ins, the init script
/// under its installed name, and `config/iot-ota-server` holding `config`.
struct Router {
    root: TempDir,
}

impl Router {
    fn new(config: &str) -> Router {
        let root = TempDir::new("openwrt");
        root.write("rc.common", RC_COMMON.as_bytes());
        root.write("functions.sh", FUNCTIONS_SH.as_bytes());
        root.write("procd.sh", PROCD_SH.as_bytes());
        std::fs::create_dir_all(root.path().join("init.d")).expect("create init.d");
        std::fs::copy(init_script(), root.path().join("init.d").join(SERVICE))
            .expect("copy the init script");
        std::fs::create_dir_all(root.path().join("config")).expect("create config");
        root.write(&format!("config/{SERVICE}"), config.as_bytes());
        Router { root }
    }

    /// Runs `/etc/init.d/iot-ota-server ACTION` under `shell` and returns
    /// what procd was asked; the script must exit 0.
    fn run(&self, shell: &[&str], action: &str) -> Recording {
        let record = self.root.path().join("procd.record");
        let _ = std::fs::remove_file(&record);
        let (program, args) = shell.split_first().expect("a shell");
        let output = run_bounded(
            Command::new(program)
                .args(args)
                .arg(self.root.path().join("rc.common"))
                .arg(self.root.path().join("init.d").join(SERVICE))
                .arg(action)
                .env("UCI_CONFIG_DIR", self.root.path().join("config"))
                .env("PROCD_RECORD", &record),
            SCRIPT_LIMIT,
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "{shell:?}: init script {action} exited {:?}; stderr:\n{stderr}",
            output.status
        );
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        parse_recording(&text, stderr)
    }
}

/// The command line `config` gives under every shell (the same under
/// each), from its single instance.
fn command_for(config: &str) -> Vec<String> {
    let router = Router::new(config);
    let mut commands = shells()
        .into_iter()
        .map(|shell| router.run(&shell, "start").instance().command());
    let first = commands.next().expect("at least one shell");
    for other in commands {
        assert_eq!(
            other, first,
            "dash and BusyBox ash build different command lines"
        );
    }
    first
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// A one-section configuration with `body` (UCI lines) after `enabled`.
fn section(body: &str) -> String {
    format!("config server 'main'\n\toption enabled '1'\n{body}")
}

// ------------------------------------------------------------ tests

#[test]
fn init_script_parses_under_sh_and_busybox_ash() {
    for shell in shells() {
        let (program, args) = shell.split_first().expect("a shell");
        let output = run_bounded(
            Command::new(program)
                .args(args)
                .arg("-n")
                .arg(init_script()),
            SCRIPT_LIMIT,
        );
        assert!(
            output.status.success(),
            "{shell:?} -n: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn packaged_config_starts_one_jailed_unprivileged_instance() {
    let router = Router::new(&packaged_config());
    for shell in shells() {
        let recording = router.run(&shell, "start");
        let service = recording.service();
        assert_eq!(service.name, SERVICE);
        assert_eq!(service.reload_triggers, strings(&[SERVICE]), "{shell:?}");
        let instance = recording.instance();
        assert_eq!(instance.name, "main");
        assert_eq!(
            instance.command(),
            strings(&[
                PROG,
                "-d",
                "/srv/firmware",
                "--state-dir",
                "/tmp/iot-ota-server",
                "--log-format",
                "syslog"
            ]),
            "{shell:?}"
        );
        assert!(instance.param("respawn").is_some(), "no respawn");
        assert_eq!(instance.param("stdout"), Some(strings(&["1"])));
        assert_eq!(instance.param("stderr"), Some(strings(&["1"])));
        assert_eq!(instance.param("no_new_privs"), Some(strings(&["1"])));
        let user = package_user();
        assert_eq!(instance.param("user"), Some(vec![user.clone()]));
        assert_eq!(instance.param("group"), Some(vec![user]));
        let jail = instance.jail.clone().expect("a jail");
        assert_eq!(jail.first().map(String::as_str), Some(SERVICE));
        for flag in ["log", "ronly"] {
            assert!(
                jail.contains(&flag.to_owned()),
                "jail without {flag}: {jail:?}"
            );
        }
        assert_eq!(instance.read_only, strings(&["/srv/firmware"]));
        // The journal's directory, in RAM, is the one it may write.
        assert_eq!(instance.read_write, strings(&["/tmp/iot-ota-server"]));
        assert!(recording.signals.is_empty(), "start sent a signal");
        assert!(recording.stderr.is_empty(), "stderr: {}", recording.stderr);
    }
    // The script made the state directory (empty: removed again).
    let _ = std::fs::remove_dir("/tmp/iot-ota-server");
}

/// The user the package creates (`USERID:=user:group` in its Makefile).
fn package_user() -> String {
    let makefile =
        std::fs::read_to_string(package_dir().join("Makefile")).expect("read the package Makefile");
    let userid = makefile
        .lines()
        .find_map(|line| line.trim().strip_prefix("USERID:="))
        .expect("USERID:= in the Makefile");
    let (user, group) = userid.split_once(':').expect("USERID:=user:group");
    assert_eq!(user, group, "one name for the user and its group");
    user.to_owned()
}

#[test]
fn every_option_maps_to_its_flag_and_lists_repeat() {
    let config = section(
        "\toption dir '/srv/fw images'
\toption files '/srv/files'
\tlist listen '[::]:5683'
\tlist listen '[fe80::1%br-lan]:5683'
\toption block_size '64'
\toption peers '500'
\toption rate_limit '20'
\toption rescan '0'
\toption echo '1'
\tlist multicast 'wpan0'
\tlist multicast 'br-lan'
\toption log_level 'debug'
\toption log_format 'journal'
\toption devices '500'
\tlist status_from '192.168.1.0/24'
\toption state_dir '/tmp/iot-ota-state test'
",
    );
    let command = command_for(&config);
    assert_eq!(
        command,
        strings(&[
            PROG,
            "-d",
            "/srv/fw images",
            "--files",
            "/srv/files",
            "-l",
            "[::]:5683",
            "-l",
            "[fe80::1%br-lan]:5683",
            "-b",
            "64",
            "--peers",
            "500",
            "--rate-limit",
            "20",
            "--rescan",
            "0",
            "--echo",
            "--multicast",
            "wpan0",
            "--multicast",
            "br-lan",
            "--devices",
            "500",
            "--status-from",
            "192.168.1.0/24",
            "--state-dir",
            "/tmp/iot-ota-state test",
            "-v",
            "--log-format",
            "journal",
        ])
    );
    // Every flag is one the server knows.
    let help = server_help();
    for flag in command.iter().filter(|arg| arg.starts_with('-')) {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag},")),
            "the server's --help does not list {flag}"
        );
    }
    // Both served directories are in the jail, read-only.
    let router = Router::new(&config);
    let recording = router.run(&["sh"], "start");
    assert_eq!(
        recording.instance().read_only,
        strings(&["/srv/fw images", "/srv/files"])
    );
    assert_eq!(
        recording.instance().read_write,
        strings(&["/tmp/iot-ota-state test"])
    );
    // The script made the state directory (empty: removed again).
    let _ = std::fs::remove_dir("/tmp/iot-ota-state test");
}

fn server_help() -> String {
    let output = run_bounded(Command::new(SERVER_BIN).arg("--help"), SCRIPT_LIMIT);
    assert!(output.status.success(), "iot-ota-server --help failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn booleans_and_log_levels() {
    let tail = |command: Vec<String>| command[3..].to_vec();
    for (value, expected) in [
        ("1", true),
        ("yes", true),
        ("on", true),
        ("true", true),
        ("0", false),
        ("no", false),
        ("off", false),
        ("false", false),
    ] {
        let command = command_for(&section(&format!("\toption echo '{value}'\n")));
        assert_eq!(
            command.contains(&"--echo".to_owned()),
            expected,
            "echo '{value}': {command:?}"
        );
    }
    for (level, flags) in [
        ("warn", vec!["-q"]),
        ("info", vec![]),
        ("debug", vec!["-v"]),
        ("trace", vec!["-v", "-v"]),
    ] {
        let command = command_for(&section(&format!(
            "\toption log_level '{level}'\n\toption log_format 'plain'\n"
        )));
        let mut expected = strings(&flags);
        expected.extend(strings(&["--log-format", "plain"]));
        assert_eq!(tail(command), expected, "log_level '{level}'");
    }
    // An unknown level is named on stderr and logs at info.
    let router = Router::new(&section("\toption log_level 'loud'\n"));
    let recording = router.run(&["sh"], "start");
    assert_eq!(
        tail(recording.instance().command()),
        strings(&["--log-format", "syslog"])
    );
    assert!(
        recording.stderr.contains("'loud'"),
        "stderr: {}",
        recording.stderr
    );
}

#[test]
fn disabled_sections_start_no_instance() {
    let router =
        Router::new("config server 'main'\n\toption enabled '0'\n\toption dir '/srv/firmware'\n");
    for shell in shells() {
        let recording = router.run(&shell, "start");
        // The service is still submitted, empty: procd then stops an
        // instance that was running.
        assert!(
            recording.service().instances.is_empty(),
            "{shell:?}: {recording:#?}"
        );
    }
    // Of several sections, the enabled ones (enabled by default) start,
    // each named after its section.
    let router = Router::new(
        "config server 'mesh'\n\tlist listen '[fd00::1]:5683'\n\n\
         config server 'off'\n\toption enabled 'no'\n\n\
         config server 'lan'\n\toption enabled '1'\n\tlist listen '192.168.1.1:5683'\n",
    );
    for shell in shells() {
        let recording = router.run(&shell, "start");
        let names: Vec<&str> = recording
            .service()
            .instances
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(names, ["mesh", "lan"], "{shell:?}");
        let lan = &recording.service().instances[1];
        assert!(lan.command().contains(&"192.168.1.1:5683".to_owned()));
    }
}

#[test]
fn reload_signals_hup_then_submits_the_configuration_again() {
    let router = Router::new(&packaged_config());
    for shell in shells() {
        let recording = router.run(&shell, "reload");
        assert_eq!(
            recording.signals,
            vec![(0, strings(&[SERVICE, "*", "HUP"]))],
            "{shell:?}: one SIGHUP to every instance, before the configuration"
        );
        assert_eq!(recording.instance().name, "main", "{shell:?}");
    }
}

// ------------------------------------------------------------ a real run

/// A server process killed when dropped, its stderr in a file.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn recorded_command_line_serves_a_download() {
    let firmware = TempDir::new("openwrt-fw");
    let images = support::write_images(&firmware, &[("ROUTER-MOTE", 5000)]);
    let image = &images[0];
    let config = section(&format!(
        "\toption dir '{}'
\tlist listen '127.0.0.1:0'
\toption block_size '256'
\toption peers '64'
\toption rate_limit '1000'
\toption echo '1'
\toption rescan '0'
\toption log_level 'info'
\toption log_format 'plain'
",
        firmware.path().display()
    ));
    let command = command_for(&config);
    assert_eq!(command.first().map(String::as_str), Some(PROG));
    let work = TempDir::new("openwrt-run");
    let log = work.path().join("server.log");
    let stderr = std::fs::File::create(&log).expect("create the log file");
    let child = Command::new(SERVER_BIN)
        .args(&command[1..])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start the server");
    let mut server = Running { child, log };
    let address = wait_for_address(&mut server);

    let output_file = work.path().join("download.bin");
    let output = run_bounded(
        Command::new(CLIENT_BIN)
            .arg(&address)
            .args([
                "--pid",
                &image.pid,
                "--version",
                "1.0.0",
                "--timeout-ms",
                "200",
            ])
            .arg("-o")
            .arg(&output_file),
        Duration::from_secs(60),
    );
    assert!(
        output.status.success(),
        "client: {}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    let downloaded = std::fs::read(&output_file).expect("read the download");
    assert!(
        downloaded == image.bytes,
        "the download differs from the image"
    );
    // The configured block size and Echo were in force.
    let summary = String::from_utf8_lossy(&output.stderr);
    assert!(
        summary.contains("in 20 blocks"),
        "5000 bytes in 256-byte blocks are 20: {summary}"
    );
    assert!(
        server.log().contains("Echo amplification check on"),
        "--echo not in force; log:\n{}",
        server.log()
    );
}

/// The address of the server's "listening on" line (at most 20 s).
fn wait_for_address(server: &mut Running) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = server.log();
        if let Some(address) = log
            .lines()
            .filter_map(|line| line.split("listening on ").nth(1))
            .find_map(|rest| rest.split_whitespace().next())
        {
            return address.to_owned();
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("the server exited {status:?}; log:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "no \"listening on\" within 20 s; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------ the Makefile

/// OpenWrt's build system as far as the package Makefile uses it: the
/// variables it reads, `BuildPackage` as three targets (`prepare` runs
/// Build/Prepare, `install` the package's install recipe into DESTDIR,
/// `metadata` prints what the package declares), and rust-package.mk's
/// variables.
const RULES_MK: &str = "INCLUDE_DIR:=$(TOPDIR)/include\n";
const PACKAGE_MK: &str = r#"
PKG_BUILD_DIR:=$(BUILD_DIR)/$(PKG_NAME)-$(PKG_VERSION)
INSTALL_DIR:=install -d -m0755
INSTALL_BIN:=install -m0755
INSTALL_CONF:=install -m0600
CP:=cp -fpR
define BuildPackage
$$(eval $$(Package/$(1)))
prepare:
	$$(Build/Prepare)
install:
	$$(call Package/$(1)/install,$$(DESTDIR))
metadata:
	@echo 'PKG_VERSION=$$(PKG_VERSION)'
	@echo 'PKG_BUILD_DEPENDS=$$(PKG_BUILD_DEPENDS)'
	@echo 'RUST_PKG_LOCKED=$$(RUST_PKG_LOCKED)'
	@echo 'RUST_PKG_FEATURES=$$(RUST_PKG_FEATURES)'
	@echo 'DEPENDS=$$(DEPENDS)'
	@echo 'USERID=$$(USERID)'
	@echo 'CONFFILES=$$(strip $$(Package/$(1)/conffiles))'
endef
"#;
const RUST_PACKAGE_MK: &str = "RUST_ARCH_DEPENDS:=@(aarch64||arm||mipsel)\n";

#[test]
fn makefile_installs_both_programs_the_service_and_its_config() {
    if !support::require_program("make") {
        return;
    }
    let top = TempDir::new("openwrt-top");
    for dir in [
        "include",
        "feeds/packages/lang/rust",
        "build",
        "pkg-install/bin",
        "root",
    ] {
        std::fs::create_dir_all(top.path().join(dir)).expect("create a stand-in dir");
    }
    top.write("rules.mk", RULES_MK.as_bytes());
    top.write("include/package.mk", PACKAGE_MK.as_bytes());
    top.write(
        "feeds/packages/lang/rust/rust-package.mk",
        RUST_PACKAGE_MK.as_bytes(),
    );
    // What `cargo install --root PKG_INSTALL_DIR` leaves.
    for program in [SERVER_BIN, CLIENT_BIN] {
        let name = Path::new(program).file_name().expect("a file name");
        std::fs::copy(program, top.path().join("pkg-install/bin").join(name))
            .expect("copy a program");
    }
    let make = |target: &str| {
        let output = run_bounded(
            Command::new("make")
                .arg("-C")
                .arg(package_dir())
                .arg(format!("TOPDIR={}", top.path().display()))
                .arg(format!("BUILD_DIR={}", top.path().join("build").display()))
                .arg(format!(
                    "PKG_INSTALL_DIR={}",
                    top.path().join("pkg-install").display()
                ))
                .arg(format!("DESTDIR={}", top.path().join("root").display()))
                .arg("--no-print-directory")
                .arg(target),
            SCRIPT_LIMIT,
        );
        assert!(
            output.status.success(),
            "make {target}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let metadata = make("metadata");
    let value = |name: &str| {
        metadata
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} not in:\n{metadata}"))
            .to_owned()
    };
    assert_eq!(
        value("PKG_VERSION"),
        env!("CARGO_PKG_VERSION"),
        "the Makefile's version"
    );
    assert_eq!(value("PKG_BUILD_DEPENDS"), "rust/host");
    assert_eq!(value("RUST_PKG_LOCKED"), "1");
    // `cargo install` without the load generator, whatever else it enables.
    let features = value("RUST_PKG_FEATURES");
    assert!(
        !features.contains("loadgen"),
        "the package enables {features}"
    );
    assert_eq!(value("DEPENDS"), "@(aarch64||arm||mipsel)");
    assert_eq!(value("USERID"), format!("{0}:{0}", package_user()));
    assert_eq!(value("CONFFILES"), "/etc/config/iot-ota-server");

    // Build/Prepare copies what `cargo install --path` needs.
    make("prepare");
    let build = top
        .path()
        .join("build")
        .join(format!("iot-ota-server-{}", env!("CARGO_PKG_VERSION")));
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "LICENSE",
        "src/bin/iot-ota-server/main.rs",
        "src/lib.rs",
    ] {
        assert!(
            build.join(file).is_file(),
            "Build/Prepare did not copy {file}"
        );
    }

    make("install");
    let root = top.path().join("root");
    for program in ["usr/bin/iot-ota-server", "usr/bin/iot-ota-client"] {
        assert!(
            is_executable(&root.join(program)),
            "{program} not installed executable"
        );
    }
    // The installed client is the default build (what `cargo install`
    // makes with no features), so it has no `bench` or `baseline`: nothing
    // the package installs answers a datagram with more than it received.
    if cfg!(feature = "loadgen") {
        // The client this test copies is then built with it too.
        eprintln!("SKIPPED: the installed client's refusal of bench (built with loadgen)");
    } else {
        support::assert_no_load_generator(&[], root.join("usr/bin/iot-ota-client"));
    }
    let init = root.join("etc/init.d/iot-ota-server");
    assert!(is_executable(&init), "the init script is not executable");
    assert_eq!(read(&init), read(&init_script()));
    assert_eq!(
        read(&root.join("etc/config/iot-ota-server")),
        packaged_config().into_bytes()
    );
    assert!(root.join("srv/firmware").is_dir(), "no /srv/firmware");
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
