//! How a Kafka client authenticates: the security protocol, the SASL user and password, and the
//! certificate authority that signed the brokers' certificates.
//!
//! The local broker of `dev/services` takes plaintext connections, which is the default. On GKE
//! the Strimzi listener asks every client for a SCRAM-SHA-512 user (`k8s/base/kafka-users.yaml`):
//! `KAFKA_SECURITY_PROTOCOL=sasl_plaintext`, `KAFKA_SASL_USERNAME` and the password from a file
//! (`KAFKA_SASL_PASSWORD_FILE`, a mounted Secret) or from `KAFKA_SASL_PASSWORD`.
//!
//! Invariant: the password is never printed. [`Secret`] has no `Display`, its `Debug` is
//! redacted, `--help` hides the variable's value, and rdkafka's own `ClientConfig` `Debug`
//! redacts `sasl.password`.

use std::{fmt, path::PathBuf, str::FromStr};

use rdkafka::ClientConfig;

/// A password, read once and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The password itself, for the one place that hands it to the Kafka client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a password file (a mounted Kubernetes Secret, or a file made with `echo`): the whole
    /// file, without one trailing line break. An unreadable or empty file is an error naming it.
    pub fn read_file(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the password file {path}: {e}"))?;
        let password = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        if password.is_empty() {
            return Err(format!("the password file {path} is empty"));
        }
        Ok(Secret(password.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Secret(value.to_owned()))
    }
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    /// No authentication, no encryption: the local broker.
    #[default]
    #[value(name = "plaintext")]
    Plaintext,
    /// SASL user and password over an unencrypted connection: the Strimzi `plain` listener.
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    /// SASL user and password over TLS.
    #[value(name = "sasl_ssl")]
    SaslSsl,
    /// TLS without SASL.
    #[value(name = "ssl")]
    Ssl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
            SecurityProtocol::Ssl => "ssl",
        }
    }

    pub fn uses_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::SaslSsl | SecurityProtocol::Ssl)
    }
}

/// librdkafka's `sasl.mechanisms`: the ones that take a user and a password.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    /// What Strimzi's `scram-sha-512` listener authentication and `KafkaUser` speak.
    #[default]
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// The password itself on the wire: only over TLS.
    #[value(name = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// How this client authenticates to the brokers; flattened into [`crate::config::KafkaArgs`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KafkaSecurityArgs {
    /// How to connect to the brokers: `plaintext` (the local broker), `sasl_plaintext` (a user and
    /// password, as the GKE listener asks), `sasl_ssl` (the same over TLS) or `ssl`.
    #[arg(
        long = "kafka-security-protocol",
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        ignore_case = true,
        default_value_t = SecurityProtocol::Plaintext
    )]
    pub security_protocol: SecurityProtocol,
    /// The SASL mechanism, with a SASL protocol.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "KAFKA_SASL_MECHANISM",
        value_enum,
        ignore_case = true,
        default_value_t = SaslMechanism::ScramSha512
    )]
    pub sasl_mechanism: SaslMechanism,
    /// The Kafka user this service authenticates as (required with a SASL protocol).
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// The user's password (or KAFKA_SASL_PASSWORD_FILE, preferred). The flag form is visible in
    /// the process list: use the variable or the file.
    #[arg(long = "kafka-sasl-password", env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<Secret>,
    /// A file that holds the user's password (a mounted Secret), read at start; one trailing line
    /// break is ignored.
    #[arg(
        long = "kafka-sasl-password-file",
        env = "KAFKA_SASL_PASSWORD_FILE",
        value_name = "PATH",
        value_parser = Secret::read_file,
        conflicts_with = "sasl_password"
    )]
    pub sasl_password_file: Option<Secret>,
    /// PEM file (or folder) of the certificate authorities that signed the brokers' certificates,
    /// with a TLS protocol; without it, the system's.
    #[arg(long = "kafka-ssl-ca-location", env = "KAFKA_SSL_CA_LOCATION", value_name = "PATH")]
    pub ssl_ca_location: Option<PathBuf>,
}

impl KafkaSecurityArgs {
    /// A SASL user with its password, over `protocol`: what the tests and tools that build
    /// `KafkaArgs` by hand use.
    pub fn sasl(protocol: SecurityProtocol, username: &str, password: &str) -> Self {
        KafkaSecurityArgs {
            security_protocol: protocol,
            sasl_username: Some(username.to_owned()),
            sasl_password: Some(Secret::new(password)),
            ..KafkaSecurityArgs::default()
        }
    }

    /// The password, from the variable or the file.
    pub fn password(&self) -> Option<&Secret> {
        self.sasl_password.as_ref().or(self.sasl_password_file.as_ref())
    }

    /// Writes the settings into a client configuration (librdkafka's names).
    pub fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.security_protocol.as_str());
        if self.security_protocol.uses_sasl() {
            config.set("sasl.mechanisms", self.sasl_mechanism.as_str());
            if let Some(username) = &self.sasl_username {
                config.set("sasl.username", username);
            }
            if let Some(password) = self.password() {
                config.set("sasl.password", password.expose());
            }
        }
        if let Some(ca) = &self.ssl_ca_location {
            config.set("ssl.ca.location", ca.display().to_string());
        }
    }

    /// See [`crate::config::KafkaArgs::validate`].
    pub fn validate(&self) -> Result<(), String> {
        let protocol = self.security_protocol.as_str();
        let username = self.sasl_username.as_deref().filter(|u| !u.is_empty());
        let password = self.password().filter(|p| !p.expose().is_empty());
        if self.security_protocol.uses_sasl() {
            if username.is_none() {
                return Err(format!(
                    "KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME (--kafka-sasl-username): the Kafka \
                     user this service authenticates as"
                ));
            }
            if password.is_none() {
                return Err(format!(
                    "KAFKA_SECURITY_PROTOCOL={protocol} needs the user's password: KAFKA_SASL_PASSWORD_FILE \
                     (--kafka-sasl-password-file) or KAFKA_SASL_PASSWORD"
                ));
            }
        } else if let Some(setting) = [
            (self.sasl_username.is_some(), "KAFKA_SASL_USERNAME"),
            (self.sasl_password.is_some(), "KAFKA_SASL_PASSWORD"),
            (self.sasl_password_file.is_some(), "KAFKA_SASL_PASSWORD_FILE"),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
        {
            return Err(format!(
                "{setting} is set, but KAFKA_SECURITY_PROTOCOL={protocol} sends no credentials: set \
                 KAFKA_SECURITY_PROTOCOL to sasl_plaintext or sasl_ssl"
            ));
        }
        if let Some(ca) = &self.ssl_ca_location {
            if !self.security_protocol.uses_tls() {
                return Err(format!(
                    "KAFKA_SSL_CA_LOCATION is set, but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS: set it \
                     to ssl or sasl_ssl"
                ));
            }
            std::fs::metadata(ca).map_err(|e| format!("KAFKA_SSL_CA_LOCATION {}: {e}", ca.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::KafkaArgs;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    fn parse(args: &[&str]) -> Result<KafkaArgs, String> {
        let args = std::iter::once("test").chain(args.iter().copied());
        Cli::try_parse_from(args).map(|cli| cli.kafka).map_err(|e| e.to_string())
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("bandvote-ops-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("a temporary file");
        path
    }

    #[test]
    fn plaintext_is_the_default_and_sends_no_credentials() {
        let kafka = parse(&[]).expect("defaults parse");
        assert_eq!(kafka.security.security_protocol, SecurityProtocol::Plaintext);
        kafka.validate().expect("the defaults are valid");
        let config = kafka.client_config("test");
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
        assert_eq!(config.get("sasl.mechanisms"), None);
        assert_eq!(config.get("sasl.username"), None);
    }

    #[test]
    fn a_sasl_user_with_a_password_file_is_applied_and_the_password_is_never_printed() {
        let file = temp_file("password", "s3cret-Pässword\n");
        let file = file.to_str().expect("a UTF-8 path");
        let kafka = parse(&[
            "--kafka-security-protocol=SASL_PLAINTEXT",
            "--kafka-sasl-username=ingest",
            "--kafka-sasl-password-file",
            file,
        ])
        .expect("parses");
        kafka.validate().expect("valid");
        let config = kafka.client_config("test");
        assert_eq!(config.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("ingest"));
        assert_eq!(config.get("sasl.password"), Some("s3cret-Pässword"), "the trailing line break is not part of it");
        for printed in [format!("{kafka:?}"), format!("{config:?}")] {
            assert!(!printed.contains("s3cret"), "the password is printed: {printed}");
        }
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn the_mechanism_is_read_in_either_case() {
        let kafka = parse(&["--kafka-sasl-mechanism=scram-sha-256"]).expect("parses");
        assert_eq!(kafka.security.sasl_mechanism, SaslMechanism::ScramSha256);
        let error = parse(&["--kafka-sasl-mechanism=GSSAPI"]).expect_err("not a password mechanism");
        assert!(error.contains("--kafka-sasl-mechanism"), "{error}");
    }

    #[test]
    fn sasl_without_a_user_or_a_password_names_the_missing_setting() {
        let no_user = parse(&["--kafka-security-protocol=sasl_plaintext", "--kafka-sasl-password=x"]).expect("parses");
        let error = no_user.validate().expect_err("no user");
        assert!(error.contains("KAFKA_SASL_USERNAME"), "{error}");
        let no_password =
            parse(&["--kafka-security-protocol=sasl_ssl", "--kafka-sasl-username=ingest"]).expect("parses");
        let error = no_password.validate().expect_err("no password");
        assert!(error.contains("KAFKA_SASL_PASSWORD_FILE") && error.contains("sasl_ssl"), "{error}");
        let empty = parse(&["--kafka-security-protocol=sasl_plaintext", "--kafka-sasl-username="]).expect("parses");
        assert!(empty.validate().expect_err("empty user").contains("KAFKA_SASL_USERNAME"));
    }

    #[test]
    fn credentials_without_a_sasl_protocol_are_refused_rather_than_ignored() {
        let kafka = parse(&["--kafka-sasl-username=ingest", "--kafka-sasl-password=x"]).expect("parses");
        let error = kafka.validate().expect_err("plaintext sends no credentials");
        assert!(
            error.contains("KAFKA_SASL_USERNAME") && error.contains("KAFKA_SECURITY_PROTOCOL=plaintext"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_password_file_names_the_setting_and_the_file() {
        let error = parse(&["--kafka-sasl-password-file=/nonexistent/kafka-password"]).expect_err("no such file");
        assert!(
            error.contains("--kafka-sasl-password-file") && error.contains("/nonexistent/kafka-password"),
            "{error}"
        );
        let empty = temp_file("empty", "\n");
        let error = parse(&["--kafka-sasl-password-file", empty.to_str().expect("UTF-8")]).expect_err("empty");
        assert!(error.contains("is empty"), "{error}");
        let both = parse(&["--kafka-sasl-password=x", "--kafka-sasl-password-file", empty.to_str().expect("UTF-8")]);
        assert!(both.is_err(), "the password and its file together are ambiguous");
        let _ = std::fs::remove_file(empty);
    }

    #[test]
    fn a_ca_needs_tls_and_must_exist() {
        let kafka = parse(&["--kafka-ssl-ca-location=/etc/hosts"]).expect("parses");
        let error = kafka.validate().expect_err("plaintext does not use TLS");
        assert!(error.contains("KAFKA_SSL_CA_LOCATION") && error.contains("does not use TLS"), "{error}");
        let missing =
            parse(&["--kafka-security-protocol=ssl", "--kafka-ssl-ca-location=/nonexistent/ca.pem"]).expect("parses");
        let error = missing.validate().expect_err("no such file");
        assert!(error.contains("KAFKA_SSL_CA_LOCATION /nonexistent/ca.pem"), "{error}");
        let ca = temp_file("ca.pem", "-----BEGIN CERTIFICATE-----\n");
        let tls = parse(&["--kafka-security-protocol=ssl", "--kafka-ssl-ca-location", ca.to_str().expect("UTF-8")])
            .expect("parses");
        tls.validate().expect("valid");
        assert_eq!(tls.client_config("test").get("ssl.ca.location"), ca.to_str());
        let _ = std::fs::remove_file(ca);
    }
}
