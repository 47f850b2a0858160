//! Deployment files agree with the relay's configuration.

use stencil_relay::config::{Config, DatabaseUrl, ServeArgs};

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn fly_toml_matches_the_relay_settings() {
    let fly: toml::Value = toml::from_str(&read("fly.toml")).unwrap();
    let env = fly["env"].as_table().unwrap();
    let get = |k: &str| env.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let flags = ["RELAY_LISTEN", "RELAY_DATABASE_URL"].map(|var| {
        let flag = var.trim_start_matches("RELAY_").to_ascii_lowercase().replace('_', "-");
        format!("--{flag}={}", get(var).unwrap_or_else(|| panic!("fly.toml sets {var}")))
    });
    let config = Config::from_args(&ServeArgs::from_flags(flags).expect("fly.toml's environment is valid"))
        .expect("fly.toml's environment is a valid configuration");

    let port = fly["http_service"]["internal_port"].as_integer().unwrap();
    assert_eq!(i64::from(config.listen.port()), port, "internal_port is the listen port");
    assert!(config.listen.ip().is_unspecified(), "Fly's proxy reaches the machine from outside");

    let mount = fly["mounts"].as_array().map_or_else(|| fly["mounts"].clone(), |m| m[0].clone());
    let volume = mount["destination"].as_str().unwrap();
    let DatabaseUrl::Sqlite(path) = &config.database else { panic!("fly.toml runs on the embedded store") };
    assert!(path.starts_with(volume), "the SQLite file {path:?} lives on the volume {volume}");

    let checks = fly["http_service"]["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["path"].as_str() == Some("/healthz")));
    assert!(checks.iter().any(|c| c["path"].as_str() == Some("/readyz")), "a full disk takes the machine out");
}

#[test]
fn dockerfile_is_multi_stage_and_runs_the_relay_as_non_root() {
    let docker = read("Dockerfile");
    assert!(docker.matches("FROM ").count() >= 2, "multi-stage");
    assert!(docker.contains("ca-certificates"), "HTTPS deliveries need root certificates");
    assert!(docker.contains("CMD [\"serve\"]"));
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    for member in manifest["workspace"]["members"].as_array().unwrap() {
        let member = member.as_str().unwrap();
        assert!(docker.contains(&format!("COPY {member} ./{member}")), "the build sees workspace member {member}");
    }
    assert!(docker.contains("--uid 10001"));
    let entrypoint = read("deploy/docker-entrypoint.sh");
    for line in entrypoint.lines().filter(|l| l.trim_start().starts_with("exec ")) {
        assert!(!line.contains("setpriv") || line.contains("--reuid=relay"), "{line}");
    }
    assert!(entrypoint.contains("exec setpriv --reuid=relay"), "as root, it drops to the relay user");
}
