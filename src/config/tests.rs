use proptest::prelude::*;

use super::*;

#[test]
fn defaults_match_the_contract() {
    let c = Config::default();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.database, DatabaseUrl::Sqlite("./data/relay.db".into()));
    assert_eq!((c.ingest_rate, c.hook_rate, c.max_body), (50, 5, 1_048_576));
    assert_eq!(c.retry_schedule.len(), 10);
    assert_eq!(c.retry_schedule[2], Duration::from_secs(120));
    assert_eq!(c.retry_schedule[9], Duration::from_secs(86_400));
    assert_eq!(c.delivery_timeout, Duration::from_secs(10));
    assert_eq!(c.retention, Duration::from_secs(30 * 86_400));
    assert!(c.admin_token.is_none() && !c.targets.allow_private);
    assert!(c.targets.check("https://hooks.zapier.com/hooks/standard/1/abc/").is_ok(), "Zapier is allowed");
    assert!(c.targets.check("https://hook.eu2.make.com/abc").is_ok());
    assert!(crate::target::host_matches("https://hook.eu2.make.com/abc", &c.make_hosts));
    assert!(!crate::target::host_matches("https://hooks.zapier.com/hooks/standard/1/", &c.make_hosts));
}

#[test]
fn bad_values_name_their_variable() {
    let cases = [
        ("--make-hosts", "hook..make.com", "RELAY_MAKE_HOSTS"),
        ("--ingest-rate", "abc", "RELAY_INGEST_RATE"),
        ("--hook-rate", "0", "RELAY_HOOK_RATE"),
        ("--retry-schedule", "5s,soon", "RELAY_RETRY_SCHEDULE"),
        ("--delivery-timeout", "0s", "RELAY_DELIVERY_TIMEOUT"),
        ("--retention", "500ms", "RELAY_RETENTION"),
        ("--listen", "nowhere", "RELAY_LISTEN"),
        ("--database-url", "mysql://user:pw-9f3@x", "RELAY_DATABASE_URL"),
        ("--allow-private-targets", "maybe", "RELAY_ALLOW_PRIVATE_TARGETS"),
        ("--target-hosts", "a..b", "RELAY_TARGET_HOSTS"),
        ("--admin-token", "   ", "RELAY_ADMIN_TOKEN"),
        ("--client-ip-header", "not a header", "RELAY_CLIENT_IP_HEADER"),
    ];
    for (flag, value, var) in cases {
        let e = ServeArgs::from_flags([format!("{flag}={value}")]).unwrap_err();
        assert_eq!(e.var, var);
        assert!(e.to_string().starts_with(var), "{e}");
        // A database URL may carry a password, and the admin token is one: never shown.
        let secret = matches!(var, "RELAY_DATABASE_URL" | "RELAY_ADMIN_TOKEN");
        assert_eq!(e.to_string().contains(value), !secret, "{e}");
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
    }
}

#[test]
fn help_shows_every_default() {
    let help = ServeArgs::augment_args(clap::Command::new("serve")).render_long_help().to_string();
    let settings = ServeArgs::augment_args(clap::Command::new("serve"));
    for arg in settings.get_arguments().filter(|a| a.get_long().is_some()) {
        let long = arg.get_long().unwrap();
        let entry = help.split(&format!("--{long} ")).nth(1).unwrap_or_else(|| panic!("--{long} is in --help"));
        let entry = entry.split("\n      --").next().unwrap();
        assert!(entry.contains("[default: "), "--{long} shows its default: {entry}");
    }
}

#[test]
fn a_lease_shorter_than_two_attempts_is_refused() {
    let args = |flags: &[&str]| ServeArgs::from_flags(flags.iter().copied()).unwrap();
    let short = Config::from_args(&args(&["--lease=15s", "--delivery-timeout=10s"])).unwrap_err();
    assert_eq!(short.var, "RELAY_LEASE");
    assert!(short.problem.contains("twice RELAY_DELIVERY_TIMEOUT"), "{}", short.problem);
    assert_eq!(Config::from_args(&args(&["--lease=20s", "--delivery-timeout=10s"])).unwrap().lease.as_secs(), 20);
    assert_eq!(Config::from_args(&args(&[])).unwrap().lease.as_secs(), 80, "by default twice the timeout and a minute");
}

#[test]
fn sqlite_urls_name_a_path() {
    assert_eq!(parse_database("sqlite:///var/lib/relay.db"), Ok(DatabaseUrl::Sqlite("/var/lib/relay.db".into())));
    assert!(parse_database("sqlite://").is_err());
}

proptest! {
    /// Any value of any setting either configures the relay or names its variable.
    #[test]
    fn any_values_configure_or_name_the_variable(values in proptest::collection::vec(".{0,24}", 12)) {
        let flags = ["--listen", "--database-url", "--ingest-rate", "--hook-rate", "--retry-schedule",
            "--delivery-timeout", "--max-body", "--target-hosts", "--allow-private-targets", "--log-format",
            "--body-timeout", "--max-connections"];
        let args: Vec<String> = flags.iter().zip(values).map(|(flag, value)| format!("{flag}={value}")).collect();
        match ServeArgs::from_flags(args) {
            Ok(args) => prop_assert!(Config::from_args(&args).is_ok()),
            Err(e) => prop_assert!(e.var.starts_with("RELAY_") && e.to_string().starts_with(&e.var), "{}", e),
        }
    }
}
