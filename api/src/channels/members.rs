//! Who is in a group or chatroom: the member list and its changes, admins, join requests
//! and invitations (groups).

use super::*;

#[derive(Deserialize)]
pub(super) struct PageQuery {
    pagenum: Option<i64>,
    pagesize: Option<i64>,
}

/// `GET …/{id}/users[?pagenum=&pagesize=]`: `{"owner": name}` or `{"member": name}` each
/// (the owner first, then by joining); pages of up to 1,000, all of them without paging.
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
        (num, size) => {
            let (num, size) = (num.unwrap_or(1), size.unwrap_or(1000));
            if num < 1 || !(1..=1000).contains(&size) {
                return Err(ApiError::BadRequest(
                    "need pagenum >= 1 and pagesize from 1 to 1000".into(),
                ));
            }
            all.into_iter()
                .skip(((num - 1) * size) as usize)
                .take(size as usize)
                .collect()
        }
    };
    Ok(Json(json!({"data": page, "count": page.len()})))
}

/// `GET …/{id}/admin`: the admins' names.
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
            Err(e @ store::Error::Database(_)) | Err(e @ store::Error::Internal(_)) => return Err(e.into()),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminBody {
    newadmin: String,
}

pub(super) async fn add_admin(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Owner, "appoint admins")?;
    let body: AdminBody = parse_json(&body)?;
    let user = body.newadmin.to_ascii_lowercase();
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

pub(super) async fn join_requests(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    let id = acting.channel.id.clone();
    acting.require(Standing::Admin, "see join requests")?;
    let pending = state.store.requests(&id, RequestKind::Join).await?;
    Ok(Json(json!({"data": pending, "count": pending.len()})))
}

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
