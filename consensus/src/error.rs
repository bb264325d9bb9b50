//! The store's one error type. Each variant's text is etcd 3.4's exact
//! message (clients such as clientv3 and etcdctl match on it), and
//! [`Error::code`] gives etcd's gRPC code; the gRPC edge converts once.

/// Everything the store can answer instead of a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The write queue is full: the disk cannot keep up.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: server stopped")]
    Stopped,
    /// An operation etcd has and this store does not (yet).
    #[error("{0} is not supported by lookout store")]
    Unsupported(std::borrow::Cow<'static, str>),
    /// No member is leader (an election is running or quorum is lost).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request could not be committed (or confirmed) in time; it may
    /// or may not have been applied.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The NOSPACE alarm is raised: writes that grow the store are refused.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The member asked is not the leader (peers retry elsewhere).
    #[error("etcdserver: not leader")]
    NotLeader,
    /// MoveLeader to a member that is not a voting member.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: unhealthy cluster")]
    UnhealthyCluster,
    /// A peer spoke another payload format version, or the raft layer
    /// failed in a way no etcd error describes.
    #[error("etcdserver: {0}")]
    Internal(String),
    /// The disk failed under redb. The batch it hit is not acknowledged.
    #[error("etcdserver: storage error: {0}")]
    Storage(String),
    // === auth (etcd's rpctypes texts) ===
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// An error etcd 3.4 passes to gRPC without mapping it, so clients see
    /// code Unknown and the auth store's own text ("auth: permission
    /// denied" from Maintenance's admin calls, for one).
    #[error("{0}")]
    Unmapped(String),
    /// An unknown sort target (etcd 3.5's answer; 3.4 crashes on it).
    /// Last, so replies between members of different versions keep their
    /// variant numbers (bincode numbers variants by position).
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
}

/// gRPC status codes as numbers, so this crate's core does not depend on
/// tonic's types (the edge maps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    OutOfRange,
    NotFound,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    Internal,
    PermissionDenied,
    Unauthenticated,
    Unknown,
}

impl Error {
    /// etcd 3.4's gRPC code for this error (rpctypes/error.go).
    pub fn code(&self) -> Code {
        match self {
            Error::EmptyKey
            | Error::InvalidSortOption
            | Error::KeyNotFound
            | Error::ValueProvided
            | Error::LeaseProvided
            | Error::TooManyOps
            | Error::DuplicateKey
            | Error::RequestTooLarge => Code::InvalidArgument,
            Error::Compacted | Error::FutureRev | Error::LeaseTtlTooLarge => Code::OutOfRange,
            Error::LeaseNotFound | Error::MemberNotFound => Code::NotFound,
            Error::LeaseExist
            | Error::MemberExist
            | Error::PeerUrlExist
            | Error::MemberNotLearner
            | Error::BadLeaderTransferee
            | Error::LearnerNotReady
            | Error::NotEnoughStartedMembers => Code::FailedPrecondition,
            Error::TooManyRequests | Error::NoSpace => Code::ResourceExhausted,
            Error::Stopped
            | Error::NoLeader
            | Error::NotLeader
            | Error::Timeout
            | Error::UnhealthyCluster => Code::Unavailable,
            Error::Unsupported(_) => Code::Unimplemented,
            Error::Storage(_) | Error::Internal(_) => Code::Internal,
            Error::RootUserNotExist
            | Error::RootRoleNotExist
            | Error::UserAlreadyExist
            | Error::UserNotFound
            | Error::RoleAlreadyExist
            | Error::RoleNotFound
            | Error::RoleNotGranted
            | Error::PermissionNotGranted
            | Error::AuthNotEnabled => Code::FailedPrecondition,
            Error::UserEmpty
            | Error::RoleEmpty
            | Error::AuthFailed
            | Error::PermissionNotGiven
            | Error::InvalidAuthMgmt
            | Error::AuthOldRevision => Code::InvalidArgument,
            Error::PermissionDenied => Code::PermissionDenied,
            Error::InvalidAuthToken => Code::Unauthenticated,
            Error::Unmapped(_) => Code::Unknown,
        }
    }
}

/// etcd's status for a store error: same code, same message.
pub fn to_status(e: Error) -> tonic::Status {
    let code = match e.code() {
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::OutOfRange => tonic::Code::OutOfRange,
        Code::NotFound => tonic::Code::NotFound,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::ResourceExhausted => tonic::Code::ResourceExhausted,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::Unimplemented => tonic::Code::Unimplemented,
        Code::Internal => tonic::Code::Internal,
        Code::PermissionDenied => tonic::Code::PermissionDenied,
        Code::Unauthenticated => tonic::Code::Unauthenticated,
        Code::Unknown => tonic::Code::Unknown,
    };
    tonic::Status::new(code, e.to_string())
}

impl From<lookout_semantics::SemanticsError> for Error {
    fn from(e: lookout_semantics::SemanticsError) -> Self {
        match e {
            lookout_semantics::SemanticsError::EmptyKey => Error::EmptyKey,
            lookout_semantics::SemanticsError::InvalidSortOption => Error::InvalidSortOption,
        }
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(e.to_string())
            }
        }
    )*};
}

storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    prost::DecodeError,
    std::io::Error
);

pub type Result<T, E = Error> = std::result::Result<T, E>;
