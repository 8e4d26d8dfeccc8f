#!/usr/bin/env bash
# signup → (code from the SMTP capture) → verify → me → logout → me refused → signin → me, against a running API.
# Usage: auth-flow.sh API_URL MAILPIT_URL
set -euo pipefail
api=$1
mailpit=$2
email="e2e-$(date +%s)-$RANDOM@example.com"
password="correct horse battery staple"
jar=$(mktemp)
body=$(mktemp)

# request METHOD PATH [JSON]: prints the status code; the body is left in $body.
request() {
  local args=(-sS -o "$body" -w '%{http_code}' -b "$jar" -c "$jar" -X "$1" "$api$2")
  if [[ $# -ge 3 ]]; then args+=(-H 'content-type: application/json' --data "$3"); fi
  curl "${args[@]}"
}

expect() { # STEP WANTED GOT
  if [[ "$2" != "$3" ]]; then
    echo "::error::$1 answered $3, expected $2: $(cat "$body")"
    exit 1
  fi
  echo "$1: $3"
}

expect signup 202 "$(request POST /api/v1/auth/signup "{\"email\":\"$email\"}")"

# The mailer sends asynchronously (Kafka → dbproc → SMTP); poll the capture with a deadline.
code=""
deadline=$((SECONDS + 120))
while [[ -z "$code" ]]; do
  id=$(curl -sS --get "$mailpit/api/v1/search" --data-urlencode "query=to:\"$email\"" | jq -r '.messages[0].ID // empty')
  if [[ -n "$id" ]]; then
    code=$(curl -sS "$mailpit/api/v1/message/$id" | jq -r '.Text' | grep -oE '\b[0-9]{6}\b' | head -n1 || true)
  fi
  if [[ -z "$code" ]]; then
    if ((SECONDS > deadline)); then
      echo "::error::no signup code for $email reached the SMTP capture within 120 s"
      exit 1
    fi
    sleep 2
  fi
done
echo "signup code received"

verify="{\"email\":\"$email\",\"otp\":\"$code\",\"password\":\"$password\",\"name\":\"E2E User\"}"
expect verify 201 "$(request POST /api/v1/auth/verify "$verify")"
expect me 200 "$(request GET /api/v1/auth/me)"
[[ "$(jq -r '.user.email' "$body")" == "$email" ]] || { echo "::error::me returned $(cat "$body")"; exit 1; }
expect logout 204 "$(request POST /api/v1/auth/logout)"
expect "me after logout" 401 "$(request GET /api/v1/auth/me)"
expect signin 200 "$(request POST /api/v1/auth/signin "{\"email\":\"$email\",\"password\":\"$password\"}")"
expect "me after signin" 200 "$(request GET /api/v1/auth/me)"
expect "signin with a wrong password" 401 "$(request POST /api/v1/auth/signin "{\"email\":\"$email\",\"password\":\"wrong password!\"}")"
echo "auth flow passed for $email"
