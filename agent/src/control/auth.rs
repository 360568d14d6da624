//! Who is calling the control API, and may they.
//!
//! Two kinds of bearer token are accepted:
//! - the agent's token file (compared in constant time). Its holder can
//!   read a root-only file on the node, so is trusted for every verb; the
//!   audit log names it `token:<file>`.
//! - in Kubernetes mode, any token the API server authenticates
//!   (TokenReview); the user then needs the verb on the virtual resource
//!   `quarantines.tollgate.io` (SubjectAccessReview), in the pod's
//!   namespace for a pod target and cluster-wide otherwise. Both answers
//!   are cached for `control.auth_cache_ttl`, at most [`CACHE_ENTRIES`]
//!   of each.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};

use super::token::TokenFile;
pub use super::token::{TokenFileError, ct_eq, ensure_token_file};

/// API group and resource of the virtual resource checked by
/// SubjectAccessReview (grant it in a Role/ClusterRole as usual).
pub const SAR_GROUP: &str = "tollgate.io";
pub const SAR_RESOURCE: &str = "quarantines";
/// Most cached TokenReview (and, separately, SubjectAccessReview) answers;
/// when full, expired ones go, and if none had expired the cache restarts.
pub const CACHE_ENTRIES: usize = 1024;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 401: no token, or one nobody recognises.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// 403: a known caller without the permission.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 503: the Kubernetes API could not answer.
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// For the audit log: `token:<file>` or the Kubernetes user name.
    pub name: String,
    pub kubernetes: Option<KubeUser>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KubeUser {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

struct Cache<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, k: &K, now: Instant) -> Option<V> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.get(k)
            .filter(|(t, _)| now.duration_since(*t) < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, k: K, v: V, now: Instant) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= CACHE_ENTRIES {
            m.retain(|_, (t, _)| now.duration_since(*t) < self.ttl);
            if m.len() >= CACHE_ENTRIES {
                m.clear();
            }
        }
        m.insert(k, (now, v));
    }
}

/// (user, verb, namespace, pod name) of a SubjectAccessReview.
type DecisionKey = (String, String, Option<String>, Option<String>);

/// TokenReview and SubjectAccessReview through the agent's client.
struct KubeAuth {
    client: Client,
    tokens: Cache<String, Result<KubeUser, String>>,
    decisions: Cache<DecisionKey, Result<(), String>>,
}

pub struct Authenticator {
    token: Option<TokenFile>,
    kube: Option<KubeAuth>,
}

impl Authenticator {
    /// `token_file`: the local token (None: only Kubernetes tokens);
    /// `kube`: review Kubernetes tokens with this client.
    pub fn new(token_file: Option<PathBuf>, kube: Option<Client>, ttl: Duration) -> Self {
        Self {
            token: token_file.map(|path| TokenFile {
                path,
                cached: Mutex::new(None),
            }),
            kube: kube.map(|client| KubeAuth {
                client,
                tokens: Cache::new(ttl),
                decisions: Cache::new(ttl),
            }),
        }
    }

    /// Who presents `authorization` (the header's value).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let token = authorization
            .ok_or_else(|| AuthError::Unauthenticated("no Authorization header".into()))?
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AuthError::Unauthenticated("Authorization is not \"Bearer <token>\"".into())
            })?;
        if let Some(tf) = &self.token {
            match tf.current() {
                Ok(t) if ct_eq(token.as_bytes(), &t) => {
                    return Ok(Caller {
                        name: format!("token:{}", tf.path.display()),
                        kubernetes: None,
                    });
                }
                Ok(_) => {}
                // The file is broken: say so in the agent's log, and still
                // let Kubernetes tokens through.
                Err(e) => tracing::warn!(error = %e, "control API token file unusable"),
            }
        }
        let Some(k) = &self.kube else {
            return Err(AuthError::Unauthenticated(
                "the token does not match the agent's token file".into(),
            ));
        };
        let now = Instant::now();
        let res = match k.tokens.get(&token.to_owned(), now) {
            Some(r) => r,
            None => {
                let r = k.review_token(token).await?;
                k.tokens.put(token.to_owned(), r.clone(), now);
                r
            }
        };
        match res {
            Ok(u) => Ok(Caller {
                name: u.username.clone(),
                kubernetes: Some(u),
            }),
            Err(why) => Err(AuthError::Unauthenticated(why)),
        }
    }

    /// May `caller` do `verb` ("create", "delete", "list") on quarantines
    /// in `namespace` (None: cluster-wide), on pod `name`?
    pub async fn authorize(
        &self,
        caller: &Caller,
        verb: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), AuthError> {
        let (Some(user), Some(k)) = (&caller.kubernetes, &self.kube) else {
            // The local token holder is root on the node.
            return Ok(());
        };
        let key = (
            user.username.clone(),
            verb.to_owned(),
            namespace.map(str::to_owned),
            name.map(str::to_owned),
        );
        let now = Instant::now();
        let res = match k.decisions.get(&key, now) {
            Some(r) => r,
            None => {
                let r = k.review_access(user, verb, namespace, name).await?;
                k.decisions.put(key, r.clone(), now);
                r
            }
        };
        res.map_err(AuthError::Forbidden)
    }
}

impl KubeAuth {
    async fn review_token(&self, token: &str) -> Result<Result<KubeUser, String>, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let out = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview: {e}")))?;
        let st = out.status.unwrap_or_default();
        if st.authenticated != Some(true) {
            return Ok(Err(format!(
                "the Kubernetes API did not authenticate the token: {}",
                st.error.as_deref().unwrap_or("no reason given")
            )));
        }
        let u = st.user.unwrap_or_default();
        Ok(Ok(KubeUser {
            username: u.username.unwrap_or_default(),
            uid: u.uid.unwrap_or_default(),
            groups: u.groups.unwrap_or_default(),
            extra: u.extra.unwrap_or_default(),
        }))
    }

    async fn review_access(
        &self,
        user: &KubeUser,
        verb: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Result<(), String>, AuthError> {
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.username.clone()),
                uid: Some(user.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(SAR_GROUP.into()),
                    resource: Some(SAR_RESOURCE.into()),
                    verb: Some(verb.into()),
                    namespace: namespace.map(str::to_owned),
                    name: name.map(str::to_owned),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let out = api
            .create(&PostParams::default(), &sar)
            .await
            .map_err(|e| AuthError::Unavailable(format!("SubjectAccessReview: {e}")))?;
        let st = out.status.unwrap_or_default();
        if st.allowed {
            Ok(Ok(()))
        } else {
            let scope =
                namespace.map_or("cluster-wide".to_owned(), |n| format!("in namespace {n}"));
            Ok(Err(format!(
                "user {} may not {verb} {SAR_RESOURCE}.{SAR_GROUP} {scope}{}",
                user.username,
                st.reason
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[tokio::test]
    async fn token_file_created_0600_checked_and_rotated() {
        let dir = std::env::temp_dir().join(format!("tg-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("control.token");
        ensure_token_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let tok = std::fs::read_to_string(&path).unwrap().trim().to_owned();
        assert_eq!(tok.len(), 64);
        // A second call keeps it.
        ensure_token_file(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), tok);

        let a = Authenticator::new(Some(path.clone()), None, Duration::from_secs(30));
        let ok = a
            .authenticate(Some(&format!("Bearer {tok}")))
            .await
            .unwrap();
        assert!(ok.name.starts_with("token:"), "{ok:?}");
        assert!(a.authorize(&ok, "create", Some("ns"), None).await.is_ok());
        for bad in [
            None,
            Some("Basic abc".to_owned()),
            Some("Bearer ".to_owned()),
            Some(format!("Bearer {}x", tok)),
        ] {
            assert!(
                matches!(
                    a.authenticate(bad.as_deref()).await,
                    Err(AuthError::Unauthenticated(_))
                ),
                "{bad:?}"
            );
        }
        // Rotation: the old token stops working without a restart.
        std::fs::write(&path, "a-new-token-0123456789\n").unwrap();
        assert!(
            a.authenticate(Some(&format!("Bearer {tok}")))
                .await
                .is_err()
        );
        assert!(
            a.authenticate(Some("Bearer a-new-token-0123456789"))
                .await
                .is_ok()
        );
        // Too short, and world-readable: refused with the reason.
        std::fs::write(&path, "short\n").unwrap();
        assert!(a.authenticate(Some("Bearer short")).await.is_err());
        std::fs::write(&path, "a-new-token-0123456789\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ensure_token_file(&path),
            Err(TokenFileError::Insecure { .. })
        ));
        assert!(
            a.authenticate(Some("Bearer a-new-token-0123456789"))
                .await
                .is_err()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
