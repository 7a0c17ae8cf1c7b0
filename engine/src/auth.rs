//! Identity: the node verifies JWTs issued by the application's backend (it owns no passwords).
//!
//! A token names the user (`sub`), optionally the device it is for (`dev`, or `device`), and
//! its expiry (`exp`, seconds since the epoch). HS256 with a shared secret is the default;
//! EdDSA or RS256 with a public key in a PEM file is the option for backends that keep the
//! signing key to themselves. An optional `tenant` claim puts the user in that tenant: the
//! identity's user id is then scoped by it (see `crate::tenant`), so the same `sub` in two
//! tenants is two users; no claim is the default tenant. Expiry is checked against the `now` the caller passes, not a clock
//! read here, so the rule is testable and the connection's expiry timer uses the same number.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims tern reads and mints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Device id the token is restricted to, if any.
    #[serde(default, alias = "device", skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Tenant the user belongs to; absent: the default tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id as held inside the node: `sub`, scoped by the tenant when there is one.
    pub user: String,
    /// The token's tenant (`None`: the default tenant).
    pub tenant: Option<String>,
    pub device: String,
    /// Token expiry in milliseconds since the epoch.
    pub expires_ms: u64,
}

/// Why a HELLO's token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Bad signature, malformed token, wrong algorithm, missing claims, bad ids.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token is bound to another device than the HELLO names.
    #[error("token is for device {token:?}, HELLO names {hello:?}")]
    DeviceMismatch { token: String, hello: String },
}

/// Errors building a verifier or minting a token.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported algorithm {0:?}: use HS256, EdDSA or RS256")]
    Algorithm(String),
    #[error("bad key: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
}

/// Verifies tokens with one key.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// Parses an algorithm name as written in configuration.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    match name.to_ascii_uppercase().as_str() {
        "HS256" => Ok(Algorithm::HS256),
        "EDDSA" => Ok(Algorithm::EdDSA),
        "RS256" => Ok(Algorithm::RS256),
        _ => Err(KeyError::Algorithm(name.to_owned())),
    }
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    // Expiry is checked in `verify` against the caller's `now`.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims = ["exp".to_owned(), "sub".to_owned()].into_iter().collect();
    v
}

impl Authenticator {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Authenticator {
        Authenticator {
            key: DecodingKey::from_secret(secret),
            validation: validation(Algorithm::HS256),
        }
    }

    /// EdDSA or RS256 with a public key in PEM form.
    pub fn public_key(alg: Algorithm, pem: &[u8]) -> Result<Authenticator, KeyError> {
        let key = match alg {
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem)?,
            Algorithm::RS256 => DecodingKey::from_rsa_pem(pem)?,
            other => return Err(KeyError::Algorithm(format!("{other:?}"))),
        };
        Ok(Authenticator {
            key,
            validation: validation(alg),
        })
    }

    /// Verifies `token` for a HELLO naming `device`, at `now_ms`.
    pub fn verify(&self, token: &str, device: &str, now_ms: u64) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        if c.exp.saturating_mul(1000) <= now_ms {
            return Err(AuthError::Expired);
        }
        if !valid_plain_id(&c.sub) {
            return Err(AuthError::Invalid("sub is not a valid user id".into()));
        }
        //= SPEC.md#tenants
        //# An optional `tenant` claim names the tenant the user belongs to
        if let Some(t) = &c.tenant {
            if !tern_storage::valid_tenant(t) {
                return Err(AuthError::Invalid("tenant is not a valid tenant id".into()));
            }
        }
        if !valid_plain_id(device) {
            return Err(AuthError::Invalid(
                "HELLO device is not a valid device id".into(),
            ));
        }
        //= SPEC.md#hello
        //# When the token names a device, the HELLO's device must be that device.
        if let Some(dev) = &c.dev {
            if dev != device {
                return Err(AuthError::DeviceMismatch {
                    token: dev.clone(),
                    hello: device.into(),
                });
            }
        }
        Ok(Identity {
            user: tern_storage::scoped(c.tenant.as_deref(), &c.sub),
            tenant: c.tenant,
            device: device.to_owned(),
            expires_ms: c.exp.saturating_mul(1000),
        })
    }
}

/// Identifier rule (wire design, "Limits on identifiers"): 1..=64 bytes, no control characters.
pub fn valid_plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && !id.chars().any(char::is_control)
}

/// A user id as held inside the node: a plain id, or a plain id scoped by a valid tenant. Names
/// a client sends are scoped by `crate::tenant::inbound`, which refuses the separator in them,
/// so a client can only name ids of its own tenant.
pub fn valid_id(id: &str) -> bool {
    match tern_storage::split_scoped(id) {
        (None, name) => valid_plain_id(name),
        (Some(t), name) => tern_storage::valid_tenant(t) && valid_plain_id(name),
    }
}

/// Mints an HS256 token (dev mode and `ternd token`) for the default tenant.
pub fn mint_hs256(
    secret: &[u8],
    user: &str,
    device: Option<&str>,
    ttl_secs: u64,
    now_secs: u64,
) -> Result<String, KeyError> {
    mint_hs256_tenant(secret, None, user, device, ttl_secs, now_secs)
}

/// Mints an HS256 token for a user of `tenant` (`None`: the default tenant).
pub fn mint_hs256_tenant(
    secret: &[u8],
    tenant: Option<&str>,
    user: &str,
    device: Option<&str>,
    ttl_secs: u64,
    now_secs: u64,
) -> Result<String, KeyError> {
    let claims = Claims {
        sub: user.to_owned(),
        dev: device.map(str::to_owned),
        exp: now_secs.saturating_add(ttl_secs),
        iat: Some(now_secs),
        tenant: tenant.map(str::to_owned),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn valid_token_gives_identity_and_expiry() {
        let a = Authenticator::hs256(b"secret");
        let t = mint_hs256(b"secret", "alice", Some("phone"), 60, NOW).unwrap();
        let id = a.verify(&t, "phone", NOW * 1000).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.expires_ms, (NOW + 60) * 1000);
    }

    #[test]
    fn refusals() {
        let a = Authenticator::hs256(b"secret");
        let t = mint_hs256(b"secret", "alice", Some("phone"), 60, NOW).unwrap();
        assert_eq!(
            a.verify(&t, "phone", (NOW + 60) * 1000),
            Err(AuthError::Expired)
        );
        assert!(matches!(
            a.verify(&t, "laptop", NOW * 1000),
            Err(AuthError::DeviceMismatch { .. })
        ));
        let other = mint_hs256(b"other", "alice", None, 60, NOW).unwrap();
        assert!(matches!(
            a.verify(&other, "phone", NOW * 1000),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            a.verify("garbage", "phone", NOW * 1000),
            Err(AuthError::Invalid(_))
        ));
        // No device claim: any device.
        let any = mint_hs256(b"secret", "alice", None, 60, NOW).unwrap();
        assert!(a.verify(&any, "tablet", NOW * 1000).is_ok());
        assert!(matches!(
            a.verify(&any, "", NOW * 1000),
            Err(AuthError::Invalid(_))
        ));
    }

    /// A throwaway Ed25519 key pair, generated for this test only.
    pub(crate) const TEST_ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIFBUCcYSh+Xq8yCQQDye7xqSG/42QDN4aPbUkGpmOh5i\n-----END PRIVATE KEY-----\n";
    pub(crate) const TEST_ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAiVjYKODS9GBcpVtMKi0w126tWBx99rTtTdBsxdQV5AM=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn eddsa_public_key_verifies_and_rejects_hs256() {
        let a = Authenticator::public_key(Algorithm::EdDSA, TEST_ED_PUBLIC.as_bytes()).unwrap();
        let claims = Claims {
            sub: "alice".into(),
            dev: None,
            exp: NOW + 60,
            iat: None,
            tenant: None,
        };
        let key = EncodingKey::from_ed_pem(TEST_ED_PRIVATE.as_bytes()).unwrap();
        let t = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap();
        assert_eq!(a.verify(&t, "phone", NOW * 1000).unwrap().user, "alice");
        // An HS256 token (e.g. signed with the public key as a secret) is refused.
        let forged = mint_hs256(TEST_ED_PUBLIC.as_bytes(), "alice", None, 60, NOW).unwrap();
        assert!(matches!(
            a.verify(&forged, "phone", NOW * 1000),
            Err(AuthError::Invalid(_))
        ));
        assert!(parse_algorithm("rs256").is_ok());
        assert!(parse_algorithm("none").is_err());
    }

    #[test]
    fn tenant_claim_scopes_the_user() {
        let a = Authenticator::hs256(b"secret");
        let t = mint_hs256_tenant(b"secret", Some("acme"), "alice", None, 60, NOW).unwrap();
        let id = a.verify(&t, "phone", NOW * 1000).unwrap();
        assert_eq!(id.user, "acme\u{1f}alice");
        assert_eq!(id.tenant.as_deref(), Some("acme"));
        assert!(valid_id(&id.user));
        let plain = mint_hs256(b"secret", "alice", None, 60, NOW).unwrap();
        let id = a.verify(&plain, "phone", NOW * 1000).unwrap();
        assert_eq!((id.user.as_str(), id.tenant), ("alice", None));
        for bad in ["", "a/b", &"t".repeat(33)] {
            let t = mint_hs256_tenant(b"secret", Some(bad), "alice", None, 60, NOW).unwrap();
            assert!(matches!(
                a.verify(&t, "phone", NOW * 1000),
                Err(AuthError::Invalid(_))
            ));
        }
        // A sub cannot smuggle a tenant in.
        let t = mint_hs256(b"secret", "acme\u{1f}alice", None, 60, NOW).unwrap();
        assert!(a.verify(&t, "phone", NOW * 1000).is_err());
        assert!(!valid_plain_id("acme\u{1f}alice"));
        assert!(!valid_id("a/b\u{1f}alice"));
    }

    #[test]
    fn device_claim_may_be_spelled_device() {
        let c: Claims = serde_json::from_str(r#"{"sub":"u","device":"d","exp":1}"#).unwrap();
        assert_eq!(c.dev.as_deref(), Some("d"));
    }
}
