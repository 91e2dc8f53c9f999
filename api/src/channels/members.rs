//! Who is in a group or chatroom: the member list and its changes, admins, join requests
//! and invitations (groups).

use super::*;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// The page, from 1 (default 1). Without `pagenum` and `pagesize`: every member.
    pagenum: Option<i64>,
    /// 1 to 1000 (default 1000).
    pagesize: Option<i64>,
}

/// `GET …/{id}/users[?pagenum=&pagesize=]`: `{"owner": name}` or `{"member": name}` each
/// (the owner first, then by joining); pages of up to 1,000, all of them without paging.
#[utoipa::path(get, path = "/{org}/{app}/chatgroups/{id}/users", tag = "groups", params(PageQuery),
    responses((status = 200, description = "The members, the owner first", body = schema::ChannelMembers)))]
pub(super) async fn members(
    State(state): State<AppState>,
    acting: Acting,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    if kind == ChannelKind::Group {
        acting.require(Standing::Member, "list the members")?;
    }
    let mut members = state.store.members(&acting.caller.app.id, kind, &id).await?;
    members.sort_by_key(|m| (m.role != Role::Owner, m.joined));
    let all: Vec<Value> = members
        .iter()
        .map(|m| match m.role {
            Role::Owner => json!({"owner": m.username}),
            _ => json!({"member": m.username}),
        })
        .collect();
    let page = match (q.pagenum, q.pagesize) {
        (None, None) => all,
        (num, size) => crate::paging::Page::new(num, size, crate::paging::MAX_PAGE_SIZE)?.of(all),
    };
    Ok(Json(json!({"data": page, "count": page.len()})))
}

/// `GET …/{id}/admin`: the admins' names.
#[utoipa::path(get, path = "/{org}/{app}/chatgroups/{id}/admin", tag = "groups",
    responses((status = 200, description = "The admins' names", body = super::schema::ChannelNames)))]
pub(super) async fn admins(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Member, "list the admins")?;
    let admins: Vec<String> = state
        .store
        .members(&acting.caller.app.id, kind, &id)
        .await?
        .into_iter()
        .filter(|m| m.role == Role::Admin)
        .map(|m| m.username)
        .collect();
    Ok(Json(json!({"data": admins, "count": admins.len()})))
}

/// `POST …/{id}/users` `{"usernames": [...]}` (the owner, an admin or the app): adds up to
/// 60 users at once, each on its own, as the platform does: `newmembers` names those that
/// became members, `failed` the others with the reason (not a user, on the blocklist, the
/// channel full).
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/users", tag = "groups", request_body = UsersBody,
    responses((status = 200, description = "`newmembers`: those added; `failed`: the others, with the reason",
        body = schema::ChannelMembersAdded)))]
pub(super) async fn add_members(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "add members")?;
    let body: UsersBody = parse_json(&body)?;
    let users = usernames(&body.usernames)?;
    if users.len() > 60 {
        return Err(ApiError::BadRequest("body.usernames names at most 60 users".into()));
    }
    let (mut added, mut failed) = (Vec::new(), Vec::new());
    for user in &users {
        match state
            .store
            .add_members(&acting.caller.app.id, kind, &id, std::slice::from_ref(user))
            .await
        {
            Ok(new) => added.extend(new),
            Err(e @ (store::Error::Database(_) | store::Error::Sqlite(_) | store::Error::Internal(_))) => {
                return Err(e.into())
            }
            Err(e) => failed.push(json!({"user": user, "reason": ApiError::from(e).to_string()})),
        }
    }
    notify(&state, &acting, &added, "joined", json!({}));
    Ok(Json(json!({"data": {
        "newmembers": added, id_key(kind): id, "action": "add_member", "failed": failed,
    }})))
}

/// Adds a member. Admins add anyone; a user adding themselves joins a chatroom or an open
/// public group, or asks to join a public group that needs approval (202).
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/users/{username}", tag = "groups",
    responses(
        (status = 200, description = "A member now", body = schema::ChannelMemberAdded),
        (status = 202, description = "The group needs approval: the user asked to join", body = schema::GroupJoinAsked),
    ))]
pub(super) async fn add_member(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    if acting.standing < Standing::Admin {
        if !acting.is_self(&username) {
            return Err(ApiError::Forbidden(
                "only the owner or an admin may add other users".into(),
            ));
        }
        if kind == ChannelKind::Group && !acting.channel.public {
            return Err(ApiError::Forbidden("a private group is joined by invitation".into()));
        }
        if kind == ChannelKind::Group && acting.channel.members_only && acting.standing == Standing::Outsider {
            if state.store.is_banned(&id, &username).await? {
                return Err(ApiError::Forbidden(format!("{username} is on the group's blocklist")));
            }
            state
                .store
                .add_request(&id, &username, RequestKind::Join, &username)
                .await?;
            let managers = state.store.managers(&id).await?;
            notify(
                &state,
                &acting,
                &managers,
                "join_request",
                json!({"applicant": username}),
            );
            return Ok((
                StatusCode::ACCEPTED,
                Json(json!({"data": {
                    "result": false, id_key(kind): id, "action": "apply_join", "user": username,
                    "status": "requested",
                }})),
            ));
        }
    }
    let added = state
        .store
        .add_members(&acting.caller.app.id, kind, &id, std::slice::from_ref(&username))
        .await?;
    notify(&state, &acting, &added, "joined", json!({}));
    Ok((
        StatusCode::OK,
        Json(json!({"data": {
            "result": true, id_key(kind): id, "action": "add_member", "user": username,
            "groupname": acting.channel.name,
        }})),
    ))
}

/// `DELETE …/{id}/users/{username}` (or `{u1},{u2}`, up to 100): leaving (themselves)
/// or removed by an admin (admins remove only ordinary members unless they are the owner).
/// One name answers an object (or an error), several a list with a `result` for each
/// (`false` with the `reason` for those that could not be removed), as on the platform.
#[utoipa::path(delete, path = "/{org}/{app}/chatgroups/{id}/users/{username}", tag = "groups",
    responses((status = 200, description = "One name: its result; several (`u1,u2`): a result for each",
        body = schema::ChannelMembersRemoved)))]
pub(super) async fn remove_members(
    State(state): State<AppState>,
    acting: Acting,
    Target(names): Target,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    let users = listed(&names)?;
    let mut results = Vec::with_capacity(users.len());
    for username in &users {
        let removed = remove_one(&state, &acting, username).await;
        match removed {
            Ok(()) => {}
            Err(e) if users.len() == 1 => return Err(e),
            Err(ApiError::Internal(e)) => return Err(ApiError::Internal(e)),
            Err(e) => {
                results.push(json!({
                    "result": false, "action": "remove_member", "reason": e.to_string(),
                    "user": username, id_key(kind): id,
                }));
                continue;
            }
        }
        let leaving = acting.is_self(username);
        let event = if leaving { "left" } else { "removed" };
        notify(&state, &acting, std::slice::from_ref(username), event, json!({}));
        stop_room_delivery(&state, &acting, std::slice::from_ref(username));
        results.push(json!({"result": true, "action": "remove_member", "user": username, id_key(kind): id}));
    }
    let data = if results.len() == 1 {
        results.remove(0)
    } else {
        Value::Array(results)
    };
    Ok(Json(json!({"data": data})))
}

pub(super) async fn remove_one(state: &AppState, acting: &Acting, username: &str) -> Result<(), ApiError> {
    if !acting.is_self(username) {
        acting.require(Standing::Admin, "remove members")?;
        require_outranks(state, acting, username).await?;
    }
    let (kind, id) = (acting.channel.kind, &acting.channel.id);
    Ok(state
        .store
        .remove_member(&acting.caller.app.id, kind, id, username)
        .await?)
}

/// Admins act on ordinary members only; the owner and the app on anyone but the owner.
pub(super) async fn require_outranks(state: &AppState, acting: &Acting, user: &str) -> Result<(), ApiError> {
    let target = state
        .store
        .member(&acting.caller.app.id, &acting.channel.id, user)
        .await?;
    let target_role = target.map(|m| m.role).unwrap_or(Role::Member);
    let allowed = match acting.standing {
        Standing::App | Standing::Owner => target_role != Role::Owner,
        Standing::Admin => target_role == Role::Member,
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "not allowed to act on the {} {user}",
            target_role.as_str()
        )))
    }
}

#[derive(Deserialize, ToSchema)]
#[schema(as = ChannelAdminBody)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminBody {
    newadmin: String,
}

/// Makes a member an admin (the owner or the app).
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/admin", tag = "groups", request_body = AdminBody,
    responses((status = 200, description = "Appointed", body = schema::ChannelAdminAdded)))]
pub(super) async fn add_admin(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Owner, "appoint admins")?;
    let body: AdminBody = parse_json(&body)?;
    let user = body.newadmin.trim().to_ascii_lowercase();
    state
        .store
        .set_role(&acting.caller.app.id, kind, &id, &user, Role::Admin)
        .await?;
    notify(
        &state,
        &acting,
        std::slice::from_ref(&user),
        "role",
        json!({"role": "admin"}),
    );
    Ok(Json(json!({"data": {"id": id, "newadmin": user, "result": "success"}})))
}

/// Makes an admin an ordinary member again (the owner or the app).
#[utoipa::path(delete, path = "/{org}/{app}/chatgroups/{id}/admin/{username}", tag = "groups",
    responses((status = 200, description = "No longer an admin", body = schema::ChannelAdminRemoved)))]
pub(super) async fn remove_admin(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Owner, "remove admins")?;
    let user = username.to_ascii_lowercase();
    state
        .store
        .set_role(&acting.caller.app.id, kind, &id, &user, Role::Member)
        .await?;
    notify(
        &state,
        &acting,
        std::slice::from_ref(&user),
        "role",
        json!({"role": "member"}),
    );
    Ok(Json(json!({"data": {"id": id, "oldadmin": user, "result": "success"}})))
}

/// The users waiting for approval to join (the owner, admins and the app).
#[utoipa::path(get, path = "/{org}/{app}/chatgroups/{id}/join_requests", tag = "groups",
    responses((status = 200, description = "The applicants' names, oldest request first", body = super::schema::ChannelNames)))]
pub(super) async fn join_requests(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    let id = acting.channel.id.clone();
    acting.require(Standing::Admin, "see join requests")?;
    let pending = state.store.requests(&id, RequestKind::Join).await?;
    Ok(Json(json!({"data": pending, "count": pending.len()})))
}

/// Approves (`…/approve`) or rejects (`…/reject`) a user's request to join (the owner,
/// admins and the app).
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/join_requests/{username}/{decision}", tag = "groups",
    responses((status = 200, description = "Decided; approved, the user is a member", body = schema::GroupJoinDecided)))]
pub(super) async fn decide_request(
    State(state): State<AppState>,
    acting: Acting,
    Target(user): Target,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "decide join requests")?;
    let approve = match params.get("decision").map(String::as_str) {
        Some("approve") => true,
        Some("reject") => false,
        _ => return Err(ApiError::NotFound("use .../approve or .../reject".into())),
    };
    if !state.store.requests(&id, RequestKind::Join).await?.contains(&user) {
        return Err(ApiError::NotFound(format!("join request of {user}")));
    }
    if approve {
        // Added first: a refusal (the group is full, the user was blocked since) leaves
        // the request for a later decision rather than losing it.
        let added = state
            .store
            .add_members(&acting.caller.app.id, kind, &id, std::slice::from_ref(&user))
            .await?;
        state.store.take_request(&id, &user, RequestKind::Join).await?;
        notify(&state, &acting, &added, "joined", json!({}));
    } else {
        if !state.store.take_request(&id, &user, RequestKind::Join).await? {
            return Err(ApiError::NotFound(format!("join request of {user}")));
        }
        notify(
            &state,
            &acting,
            std::slice::from_ref(&user),
            "request_rejected",
            json!({}),
        );
    }
    Ok(Json(json!({"data": {"id": id, "user": user, "approved": approve}})))
}

/// Invites users: admins always, members when the group allows invites. The invitee joins
/// by accepting.
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/invites", tag = "groups", request_body = UsersBody,
    responses((status = 200, description = "Invited", body = schema::GroupInvited)))]
pub(super) async fn invite(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = acting.channel.id.clone();
    if acting.channel.allow_invites {
        acting.require(Standing::Member, "invite")?;
    } else {
        acting.require(Standing::Admin, "invite")?;
    }
    let body: UsersBody = parse_json(&body)?;
    let users = usernames(&body.usernames)?;
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    state.store.require_users(&acting.caller.app.id, &refs).await?;
    // All checked before anyone is invited: a refusal invites nobody.
    for user in &users {
        if state.store.is_banned(&id, user).await? {
            return Err(ApiError::Forbidden(format!("{user} is on the group's blocklist")));
        }
    }
    for user in &users {
        state
            .store
            .add_request(&id, user, RequestKind::Invite, &acting.actor())
            .await?;
    }
    notify(&state, &acting, &users, "invited", json!({"name": acting.channel.name}));
    Ok(Json(json!({"data": {"id": id, "invited": users}})))
}

/// The invitee (or the app for them) accepts an invitation: they become a member.
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/invites/{username}/accept", tag = "groups",
    responses((status = 200, description = "A member now (`status`: `member`)", body = schema::GroupInvitation)))]
pub(super) async fn accept_invite(
    State(state): State<AppState>,
    acting: Acting,
    Target(user): Target,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.caller.may_act_as(&user)?;
    if !state.store.requests(&id, RequestKind::Invite).await?.contains(&user) {
        return Err(ApiError::NotFound(format!("invitation of {user}")));
    }
    // Added first: a refusal (the group is full) keeps the invitation.
    let added = state
        .store
        .add_members(&acting.caller.app.id, kind, &id, std::slice::from_ref(&user))
        .await?;
    state.store.take_request(&id, &user, RequestKind::Invite).await?;
    notify(&state, &acting, &added, "joined", json!({}));
    Ok(Json(json!({"data": {"id": id, "user": user, "status": "member"}})))
}

/// The invitee declines an invitation, or the owner, an admin or the app withdraws it.
#[utoipa::path(delete, path = "/{org}/{app}/chatgroups/{id}/invites/{username}", tag = "groups",
    responses((status = 200, description = "Gone (`status`: `declined`)", body = schema::GroupInvitation)))]
pub(super) async fn decline_invite(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    let id = acting.channel.id.clone();
    let user = username;
    if !acting.is_self(&user) {
        acting.require(Standing::Admin, "withdraw invitations")?;
    }
    if !state.store.take_request(&id, &user, RequestKind::Invite).await? {
        return Err(ApiError::NotFound(format!("invitation of {user}")));
    }
    Ok(Json(json!({"data": {"id": id, "user": user, "status": "declined"}})))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    use crate::channels::schema::ChannelAffiliation;

    #[derive(ToSchema)]
    pub struct ChannelMembers {
        data: Vec<ChannelAffiliation>,
        count: u64,
    }

    /// A user who could not be added, and why.
    #[derive(ToSchema)]
    pub struct ChannelMemberRefused {
        user: String,
        reason: String,
    }

    /// `groupid` (a group) or `id` (a chatroom).
    #[derive(ToSchema)]
    pub struct ChannelMembersAddedData {
        newmembers: Vec<String>,
        groupid: Option<String>,
        id: Option<String>,
        /// `add_member`.
        action: String,
        failed: Vec<ChannelMemberRefused>,
    }

    #[derive(ToSchema)]
    pub struct ChannelMembersAdded {
        data: ChannelMembersAddedData,
    }

    /// `groupid` (a group) or `id` (a chatroom).
    #[derive(ToSchema)]
    pub struct ChannelMemberAddedData {
        result: bool,
        groupid: Option<String>,
        id: Option<String>,
        /// `add_member`.
        action: String,
        user: String,
        /// The channel's name.
        groupname: String,
    }

    #[derive(ToSchema)]
    pub struct ChannelMemberAdded {
        data: ChannelMemberAddedData,
    }

    #[derive(ToSchema)]
    pub struct GroupJoinAskedData {
        /// `false`: not a member yet.
        result: bool,
        groupid: String,
        /// `apply_join`.
        action: String,
        user: String,
        /// `requested`.
        status: String,
    }

    #[derive(ToSchema)]
    pub struct GroupJoinAsked {
        data: GroupJoinAskedData,
    }

    /// One user's removal: `result` false with the `reason` when refused (several names
    /// only). `groupid` (a group) or `id` (a chatroom).
    #[derive(ToSchema)]
    pub struct ChannelMemberRemoval {
        result: bool,
        /// `remove_member`.
        action: String,
        reason: Option<String>,
        user: String,
        groupid: Option<String>,
        id: Option<String>,
    }

    /// One name: its removal; several: one each.
    #[derive(ToSchema)]
    #[serde(untagged)]
    pub enum ChannelMemberRemovals {
        One(ChannelMemberRemoval),
        Many(Vec<ChannelMemberRemoval>),
    }

    #[derive(ToSchema)]
    pub struct ChannelMembersRemoved {
        data: ChannelMemberRemovals,
    }

    #[derive(ToSchema)]
    pub struct ChannelAdminAddedData {
        id: String,
        newadmin: String,
        /// `success`.
        result: String,
    }

    #[derive(ToSchema)]
    pub struct ChannelAdminAdded {
        data: ChannelAdminAddedData,
    }

    #[derive(ToSchema)]
    pub struct ChannelAdminRemovedData {
        id: String,
        oldadmin: String,
        /// `success`.
        result: String,
    }

    #[derive(ToSchema)]
    pub struct ChannelAdminRemoved {
        data: ChannelAdminRemovedData,
    }

    #[derive(ToSchema)]
    pub struct GroupJoinDecidedData {
        id: String,
        user: String,
        approved: bool,
    }

    #[derive(ToSchema)]
    pub struct GroupJoinDecided {
        data: GroupJoinDecidedData,
    }

    #[derive(ToSchema)]
    pub struct GroupInvitedData {
        id: String,
        invited: Vec<String>,
    }

    #[derive(ToSchema)]
    pub struct GroupInvited {
        data: GroupInvitedData,
    }

    #[derive(ToSchema)]
    pub struct GroupInvitationData {
        id: String,
        user: String,
        /// `member` (accepted) or `declined`.
        status: String,
    }

    #[derive(ToSchema)]
    pub struct GroupInvitation {
        data: GroupInvitationData,
    }
}
