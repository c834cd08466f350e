//! People and what they may do: users with a role, the sites assigned to them, the scope of
//! their API tokens, and the access a request carries once its credential is resolved.
//!
//! Authorization is decided here, in pure functions, so the HTTP layer asks one question per
//! route ("may this caller see site S?") and the answer is tested without a server.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{IdError, SiteId};
use crate::time::TsMs;

/// A user's stable identifier (generated: `usr_…`); e-mail addresses can change, ids do not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        if s.is_empty() {
            return Err(IdError::Empty { kind: "user id" });
        }
        if s.len() > 64 {
            return Err(IdError::TooLong {
                kind: "user id",
                max: 64,
            });
        }
        if let Some(found) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Err(IdError::BadChar {
                kind: "user id",
                found,
            });
        }
        Ok(UserId(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> String {
        id.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A login name: an e-mail address, trimmed and lower-cased so `Ann@X.org` and `ann@x.org`
/// are one account. Checked for shape only; nothing is sent to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EmailError(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(s: &str) -> Result<Self, EmailError> {
        let s = s.trim().to_lowercase();
        if s.is_empty() {
            return Err(EmailError("e-mail address must not be empty".into()));
        }
        if s.len() > Self::MAX_LEN {
            return Err(EmailError(format!(
                "e-mail address is longer than {} bytes",
                Self::MAX_LEN
            )));
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(EmailError(format!("e-mail address must not contain {c:?}")));
        }
        let (local, domain) = s
            .rsplit_once('@')
            .ok_or_else(|| EmailError(format!("{s:?} is not an e-mail address (no '@')")))?;
        if local.is_empty() || domain.is_empty() || local.contains('@') {
            return Err(EmailError(format!(
                "{s:?} is not an e-mail address (expected name@domain)"
            )));
        }
        if domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
            return Err(EmailError(format!("{s:?} has a malformed domain")));
        }
        Ok(Email(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map_or(&self.0, |(l, _)| l)
    }
}

impl TryFrom<String> for Email {
    type Error = EmailError;
    fn try_from(s: String) -> Result<Self, EmailError> {
        Self::parse(&s)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a user is. Admins manage everything; owners manage the sites assigned to them;
/// viewers read the sites assigned to them and change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Owner,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Owner, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Owner => "owner",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected admin, owner or viewer"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A person who logs in. The password hash lives only in storage, never in this type, so a
/// `User` can be logged and serialized freely.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub role: Role,
    /// The sites an owner or viewer may see; ignored for admins, who see all.
    pub sites: BTreeSet<SiteId>,
    /// A disabled user cannot log in, and their sessions and tokens stop working.
    pub disabled: bool,
    pub created_at: TsMs,
}

/// The password rule, stated once so the API, the CLI and the docs say the same thing.
pub const PASSWORD_RULE: &str = "a password needs at least 10 characters, at least 5 of them \
     different, must not contain the e-mail's name part, must not be a common password, and may \
     be at most 1024 bytes";

const COMMON_PASSWORDS: &[&str] = &[
    "1234567890",
    "12345678910",
    "123456789012",
    "0123456789",
    "password123",
    "password1234",
    "passw0rd123",
    "qwertyuiop",
    "qwertyuiop1",
    "1q2w3e4r5t",
    "1qaz2wsx3edc",
    "iloveyou123",
    "letmein1234",
    "welcome123",
    "administrator",
    "adminadmin",
    "admin12345",
    "changeme123",
    "wattline123",
    "sunshine123",
    "football123",
    "monkey12345",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("weak password: {reason}; {PASSWORD_RULE}")]
pub struct WeakPassword {
    pub reason: &'static str,
}

/// Checks a new password against [`PASSWORD_RULE`]. Length matters most, so the rule asks
/// for length and refuses only the obviously guessable, rather than demanding symbol classes.
pub fn check_password(password: &str, email: &Email) -> Result<(), WeakPassword> {
    if password.len() > 1024 {
        return Err(WeakPassword {
            reason: "it is longer than 1024 bytes",
        });
    }
    if password.chars().count() < 10 {
        return Err(WeakPassword {
            reason: "it is shorter than 10 characters",
        });
    }
    let distinct: BTreeSet<char> = password.chars().collect();
    if distinct.len() < 5 {
        return Err(WeakPassword {
            reason: "it has fewer than 5 different characters",
        });
    }
    let lower = password.to_lowercase();
    let local = email.local_part();
    if local.len() >= 3 && lower.contains(local) {
        return Err(WeakPassword {
            reason: "it contains the e-mail's name part",
        });
    }
    if COMMON_PASSWORDS.contains(&lower.as_str()) {
        return Err(WeakPassword {
            reason: "it is a common password",
        });
    }
    Ok(())
}

/// What an API token lets its holder do with its user's rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Only reads (GET).
    Read,
    /// Everything the user may do, writes included.
    Write,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Read => "read",
            TokenScope::Write => "write",
        }
    }

    pub fn parse(s: &str) -> Result<TokenScope, String> {
        match s {
            "read" => Ok(TokenScope::Read),
            "write" => Ok(TokenScope::Write),
            _ => Err(format!("unknown scope {s:?}: expected read or write")),
        }
    }
}

/// The rights of a request made by a user, through a browser session or an API token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserAccess {
    pub user: UserId,
    pub email: Email,
    pub role: Role,
    /// Sites this request may touch: the user's sites, narrowed by the token's site list.
    /// Unused for an admin with no token restriction (see `all_sites`).
    pub sites: BTreeSet<SiteId>,
    /// True for an admin whose credential is not narrowed to some sites.
    pub all_sites: bool,
    /// A read-only token or a viewer cannot write, whatever the role says.
    pub can_write: bool,
    /// Set for a browser session: state-changing requests must then carry the CSRF token.
    pub session: bool,
}

impl UserAccess {
    /// Builds the access of `user` through a credential that may narrow it.
    pub fn new(
        user: &User,
        scope: TokenScope,
        only_sites: Option<&BTreeSet<SiteId>>,
        session: bool,
    ) -> UserAccess {
        let (mut sites, mut all_sites) = match user.role {
            Role::Admin => (BTreeSet::new(), true),
            _ => (user.sites.clone(), false),
        };
        if let Some(only) = only_sites {
            sites = if all_sites {
                only.clone()
            } else {
                sites.intersection(only).cloned().collect()
            };
            all_sites = false;
        }
        UserAccess {
            user: user.id.clone(),
            email: user.email.clone(),
            role: user.role,
            sites,
            all_sites,
            can_write: scope == TokenScope::Write && user.role != Role::Viewer,
            session,
        }
    }

    fn sees(&self, site: &SiteId) -> bool {
        self.all_sites || self.sites.contains(site)
    }
}

/// Who is acting: the admin token, a site's credential (a gateway writing for any device of
/// its site), one device, or a user. HTTP tokens, sessions and MQTT credentials all resolve to
/// one of these.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Admin,
    Site(SiteId),
    Device(crate::DeviceId),
    User(UserAccess),
}

impl Principal {
    /// Whether this caller may write readings of `device` (which belongs to `site`).
    pub fn may_write(&self, device: &crate::DeviceId, site: &SiteId) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Site(s) => s == site,
            Principal::Device(d) => d == device,
            Principal::User(u) => u.can_write && u.sees(site),
        }
    }

    /// Whether this caller may read the site and everything in it. Ingest credentials (site
    /// and device tokens) write only; they read nothing.
    pub fn may_read_site(&self, site: &SiteId) -> bool {
        match self {
            Principal::Admin => true,
            Principal::User(u) => u.sees(site),
            Principal::Site(_) | Principal::Device(_) => false,
        }
    }

    /// Whether this caller may change the site: its name and zone, its devices and their
    /// credentials, its ingest tokens.
    pub fn may_manage_site(&self, site: &SiteId) -> bool {
        match self {
            Principal::Admin => true,
            Principal::User(u) => u.can_write && u.role != Role::Viewer && u.sees(site),
            Principal::Site(_) | Principal::Device(_) => false,
        }
    }

    /// Whether this caller sees every site (lists need no filtering).
    pub fn reads_everything(&self) -> bool {
        match self {
            Principal::Admin => true,
            Principal::User(u) => u.all_sites,
            _ => false,
        }
    }

    /// Whether this caller administers the installation: users, sites, pending devices, the
    /// audit log. An admin's read-only token reads these but does not change them.
    pub fn is_admin(&self, write: bool) -> bool {
        match self {
            Principal::Admin => true,
            Principal::User(u) => u.role == Role::Admin && u.all_sites && (u.can_write || !write),
            _ => false,
        }
    }

    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        match self {
            Principal::Admin => "admin-token".to_owned(),
            Principal::Site(s) => format!("site-token:{s}"),
            Principal::Device(d) => format!("device:{d}"),
            Principal::User(u) => format!("user:{} <{}>", u.user, u.email),
        }
    }
}

/// A browser session, kept server-side so it can be revoked; only a hash of its id is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Hex SHA-256 of the cookie value.
    pub id_hash: String,
    pub user: UserId,
    pub created_at: TsMs,
    pub last_seen_at: TsMs,
    /// The session ends here, whatever its use; each use moves it forward up to a cap.
    pub expires_at: TsMs,
    /// Client address and user agent at login, for the user's session list and the audit log.
    pub address: String,
    pub user_agent: String,
}

/// An API token's description; the token itself is shown once and stored only as a hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub user: UserId,
    pub name: String,
    pub scope: TokenScope,
    /// Narrows the token to these of the user's sites; `None` means all of the user's sites.
    pub sites: Option<BTreeSet<SiteId>>,
    pub created_at: TsMs,
    pub expires_at: Option<TsMs>,
    pub last_used_at: Option<TsMs>,
}

/// One entry of the audit log: who did what to what, when and from where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Assigned by storage in insertion order; 0 before it is stored.
    pub id: i64,
    pub ts: TsMs,
    /// `user:<id> <email>`, `admin-token`, `cli`, `anonymous`…
    pub actor: String,
    /// A stable verb: `login`, `login_failed`, `user_created`, `device_token_rotated`…
    pub action: String,
    /// What was acted on: `user:<id>`, `device:<id>`, `site:<id>`…
    pub target: String,
    /// The client's address, or empty when there is none (CLI).
    pub address: String,
    /// Extra facts as a JSON object text (never secrets).
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role, sites: &[&str]) -> User {
        User {
            id: UserId::parse("usr_1").unwrap(),
            email: Email::parse("Ann@Example.org").unwrap(),
            role,
            sites: sites.iter().map(|s| SiteId::parse(*s).unwrap()).collect(),
            disabled: false,
            created_at: TsMs(0),
        }
    }

    fn site(s: &str) -> SiteId {
        SiteId::parse(s).unwrap()
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(Email::parse(" Ann@X.org ").unwrap().as_str(), "ann@x.org");
        for bad in [
            "",
            "ann",
            "@x.org",
            "ann@",
            "a b@x.org",
            "ann@.x",
            "ann@x..org",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn roles_parse_and_name_the_choices() {
        assert_eq!(Role::parse("owner").unwrap(), Role::Owner);
        let e = Role::parse("superuser").unwrap_err();
        assert!(e.contains("superuser") && e.contains("admin, owner or viewer"));
    }

    #[test]
    fn password_rule_refuses_the_guessable() {
        let email = Email::parse("annabel@x.org").unwrap();
        assert!(check_password("correct horse battery", &email).is_ok());
        let reason = |p: &str| check_password(p, &email).unwrap_err().reason;
        assert_eq!(reason("short1"), "it is shorter than 10 characters");
        assert_eq!(
            reason("aaaaabbbbbaaaaa"),
            "it has fewer than 5 different characters"
        );
        assert_eq!(
            reason("my-Annabel-2026"),
            "it contains the e-mail's name part"
        );
        assert_eq!(reason("Password123"), "it is a common password");
        assert_eq!(reason(&"ab3d5".repeat(300)), "it is longer than 1024 bytes");
        let msg = check_password("short1", &email).unwrap_err().to_string();
        assert!(msg.contains("at least 10 characters"), "{msg}");
    }

    #[test]
    fn owners_and_viewers_see_only_their_sites() {
        let owner = Principal::User(UserAccess::new(
            &user(Role::Owner, &["a"]),
            TokenScope::Write,
            None,
            true,
        ));
        assert!(owner.may_read_site(&site("a")) && owner.may_manage_site(&site("a")));
        assert!(!owner.may_read_site(&site("b")) && !owner.may_manage_site(&site("b")));
        assert!(!owner.is_admin(false) && !owner.reads_everything());

        let viewer = Principal::User(UserAccess::new(
            &user(Role::Viewer, &["a"]),
            TokenScope::Write,
            None,
            true,
        ));
        assert!(viewer.may_read_site(&site("a")));
        assert!(!viewer.may_manage_site(&site("a")));
        let dev = crate::DeviceId::parse("d").unwrap();
        assert!(!viewer.may_write(&dev, &site("a")));
        assert!(owner.may_write(&dev, &site("a")) && !owner.may_write(&dev, &site("b")));
    }

    #[test]
    fn tokens_narrow_but_never_widen() {
        let owner = user(Role::Owner, &["a", "b"]);
        let only: BTreeSet<SiteId> = [site("b"), site("c")].into();
        let access = UserAccess::new(&owner, TokenScope::Read, Some(&only), false);
        assert_eq!(access.sites, [site("b")].into());
        let p = Principal::User(access);
        assert!(p.may_read_site(&site("b")) && !p.may_read_site(&site("a")));
        assert!(!p.may_manage_site(&site("b")), "a read token cannot write");

        let admin = user(Role::Admin, &[]);
        let p = Principal::User(UserAccess::new(&admin, TokenScope::Read, None, false));
        assert!(p.reads_everything() && p.is_admin(false) && !p.is_admin(true));
        let p = Principal::User(UserAccess::new(
            &admin,
            TokenScope::Write,
            Some(&only),
            false,
        ));
        assert!(!p.reads_everything() && !p.is_admin(false));
        assert!(p.may_manage_site(&site("c")) && !p.may_read_site(&site("a")));
    }

    #[test]
    fn ingest_credentials_read_nothing() {
        for p in [
            Principal::Site(site("a")),
            Principal::Device(crate::DeviceId::parse("d").unwrap()),
        ] {
            assert!(!p.may_read_site(&site("a")) && !p.may_manage_site(&site("a")));
            assert!(!p.is_admin(false));
        }
    }
}
