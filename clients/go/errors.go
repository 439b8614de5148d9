package leasehold

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Error is an error reply of the server ({"error": {"code", "message", ...}}, SPEC §3),
// or an error the client raised itself before or instead of a reply (then Status is 0).
//
// Match the code with errors.Is and the sentinels (errors.Is(err, ErrLockHeld)), and
// read the details with errors.As:
//
//	var e *leasehold.Error
//	if errors.As(err, &e) && e.Holder != nil {
//		log.Printf("held by %s (token %d)", e.Holder.Owner, e.Holder.Token)
//	}
type Error struct {
	// Status is the HTTP status of the reply, or 0 when the client raised the error
	// (bad options, no endpoint reachable).
	Status int
	// Code is the server's error code: "lock_held", "not_owner", "invalid_argument", ...
	Code string
	// Message is the server's message; it names the field and the rule.
	Message string
	// Holder is who holds the key, for lock_held, name_taken and semaphore_full.
	Holder *HolderSummary
	// RetryAfter is the server's hint for unavailable (503) and too_many_requests (429).
	RetryAfter time.Duration
	// Reason qualifies the code where the code alone does not say: "stolen" on a
	// not_owner for a hold an operator force-released.
	Reason string

	err error // the transport error behind an unavailable or timeout raised by the client
}

// HolderSummary names the current holder in a lock_held, name_taken or semaphore_full
// error.
type HolderSummary struct {
	Owner     string
	Token     uint64
	ExpiresIn time.Duration
}

// Error returns "leasehold: <code>: <message>".
func (e *Error) Error() string {
	if e.Message == "" {
		return "leasehold: " + e.Code
	}
	return "leasehold: " + e.Code + ": " + e.Message
}

// Unwrap returns the transport error behind an error the client raised, if any.
func (e *Error) Unwrap() error { return e.err }

// Is reports whether target is the sentinel of e's code (ErrLockHeld for "lock_held",
// and so on).
func (e *Error) Is(target error) bool {
	s, ok := sentinels[e.Code]
	return ok && s == target
}

// Sentinels for the server's error codes (SPEC §3), matched with errors.Is.
var (
	ErrInvalidArgument  = errors.New("leasehold: invalid_argument")
	ErrUnauthorized     = errors.New("leasehold: unauthorized")
	ErrForbidden        = errors.New("leasehold: forbidden")
	ErrLeaseNotFound    = errors.New("leasehold: lease_not_found")
	ErrNameNotFound     = errors.New("leasehold: name_not_found")
	ErrNotFound         = errors.New("leasehold: not_found")
	ErrLockHeld         = errors.New("leasehold: lock_held")
	ErrNameTaken        = errors.New("leasehold: name_taken")
	ErrNotOwner         = errors.New("leasehold: not_owner")
	ErrSemaphoreFull    = errors.New("leasehold: semaphore_full")
	ErrLimitMismatch    = errors.New("leasehold: limit_mismatch")
	ErrPayloadTooLarge  = errors.New("leasehold: payload_too_large")
	ErrTooManyRequests  = errors.New("leasehold: too_many_requests")
	ErrInternal         = errors.New("leasehold: internal")
	ErrUnavailable      = errors.New("leasehold: unavailable")
	ErrTimeout          = errors.New("leasehold: timeout")
	ErrMethodNotAllowed = errors.New("leasehold: method_not_allowed")
)

var sentinels = map[string]error{
	"invalid_argument":   ErrInvalidArgument,
	"unauthorized":       ErrUnauthorized,
	"forbidden":          ErrForbidden,
	"lease_not_found":    ErrLeaseNotFound,
	"name_not_found":     ErrNameNotFound,
	"not_found":          ErrNotFound,
	"lock_held":          ErrLockHeld,
	"name_taken":         ErrNameTaken,
	"not_owner":          ErrNotOwner,
	"semaphore_full":     ErrSemaphoreFull,
	"limit_mismatch":     ErrLimitMismatch,
	"payload_too_large":  ErrPayloadTooLarge,
	"too_many_requests":  ErrTooManyRequests,
	"internal":           ErrInternal,
	"unavailable":        ErrUnavailable,
	"timeout":            ErrTimeout,
	"method_not_allowed": ErrMethodNotAllowed,
}

// codeForStatus names the code of a reply whose body is not the API's JSON (a proxy's).
var codeForStatus = map[int]string{
	400: "invalid_argument",
	401: "unauthorized",
	403: "forbidden",
	404: "not_found",
	405: "method_not_allowed",
	409: "not_owner",
	413: "payload_too_large",
	429: "too_many_requests",
	503: "unavailable",
	504: "timeout",
}

// invalid is an invalid_argument raised by the client: "<field>: <rule>".
func invalid(field, format string, args ...any) *Error {
	return &Error{Code: "invalid_argument", Message: field + ": " + fmt.Sprintf(format, args...)}
}

// parseError turns an error reply into an *Error.
func parseError(status int, header http.Header, body []byte) *Error {
	var envelope struct {
		Error *struct {
			Code         string      `json:"code"`
			Message      string      `json:"message"`
			Holder       *wireHolder `json:"holder"`
			RetryAfterMs *int64      `json:"retry_after_ms"`
			Reason       string      `json:"reason"`
		} `json:"error"`
	}
	e := &Error{Status: status}
	if json.Unmarshal(body, &envelope) == nil && envelope.Error != nil && envelope.Error.Code != "" {
		w := envelope.Error
		e.Code, e.Message, e.Reason = w.Code, w.Message, w.Reason
		if w.Holder != nil {
			e.Holder = &HolderSummary{Owner: w.Holder.Owner, Token: w.Holder.Token, ExpiresIn: ms(w.Holder.ExpiresInMs)}
		}
		if w.RetryAfterMs != nil {
			e.RetryAfter = time.Duration(*w.RetryAfterMs) * time.Millisecond
		}
	} else {
		e.Code = codeForStatus[status]
		if e.Code == "" {
			e.Code = "internal"
		}
		e.Message = strings.TrimSpace(fmt.Sprintf("HTTP %d: %s", status, body))
	}
	if e.RetryAfter == 0 {
		if secs, err := strconv.Atoi(header.Get("Retry-After")); err == nil && secs > 0 {
			e.RetryAfter = time.Duration(secs) * time.Second
		}
	}
	return e
}

// ErrLockNotGranted is matched (errors.Is) by a *LockNotGrantedError: an acquire, a
// registration or a semaphore slot that was not granted because someone else holds it,
// at once or when the wait ran out.
var ErrLockNotGranted = errors.New("leasehold: not granted")

// LockNotGrantedError is returned when an acquire was refused because the key is held
// (lock_held, name_taken or semaphore_full), immediately or after waiting Wait. It
// wraps the server's *Error, so errors.Is(err, ErrLockHeld) and errors.As(err, &e) with
// e *Error (for the holder) work too.
type LockNotGrantedError struct {
	Key string
	// Wait is how long the acquire asked to queue; 0 for a single try.
	Wait time.Duration
	// Err is the server's refusal, naming the holder.
	Err *Error
}

// Error says what was not granted, after how long, and the server's message.
func (e *LockNotGrantedError) Error() string {
	if e.Wait > 0 {
		return fmt.Sprintf("leasehold: %q not granted within %v: %s", e.Key, e.Wait, e.Err.Message)
	}
	return fmt.Sprintf("leasehold: %q not granted: %s", e.Key, e.Err.Message)
}

// Is matches ErrLockNotGranted.
func (e *LockNotGrantedError) Is(target error) bool { return target == ErrLockNotGranted }

// Unwrap returns the server's refusal.
func (e *LockNotGrantedError) Unwrap() error { return e.Err }

// LossReason says why a hold was lost.
type LossReason string

// Why a hold was lost.
const (
	// LossExpired: the cluster says the hold is gone (it expired, its lease was revoked,
	// or it was released through another handle).
	LossExpired LossReason = "expired"
	// LossStolen: an operator force-released the hold.
	LossStolen LossReason = "stolen"
	// LossUnreachable: renewals failed until the client deadline passed.
	LossUnreachable LossReason = "unreachable"
	// LossHeartbeatStopped: StopHeartbeat was called and the client deadline passed.
	LossHeartbeatStopped LossReason = "heartbeat_stopped"
)

// ErrLost is matched (errors.Is) by every *LostError.
var ErrLost = errors.New("leasehold: hold lost")

// ErrClientDeadline is matched by a *LostError whose client deadline passed (reasons
// LossUnreachable and LossHeartbeatStopped): the client stopped believing it holds,
// whatever the cluster did.
var ErrClientDeadline = errors.New("leasehold: client deadline passed")

// LostError is the reason a held lock, slot or name was lost, as sent on Lost().
type LostError struct {
	Key    string
	Token  uint64
	Reason LossReason
	// Err is the server's reply that ended the hold (not_owner, lease_not_found, ...) or
	// the last failed renewal; nil when there was none.
	Err error
}

// Error says which hold was lost and why.
func (e *LostError) Error() string { return "leasehold: " + e.describe() }

// describe is the error's text without the "leasehold: " prefix.
func (e *LostError) describe() string {
	var why string
	switch e.Reason {
	case LossExpired:
		why = "the hold ended on the cluster"
	case LossStolen:
		why = "released by an operator"
	case LossUnreachable:
		why = "renewals failed until the client deadline passed"
	case LossHeartbeatStopped:
		why = "the heartbeat was stopped and the client deadline passed"
	default:
		why = string(e.Reason)
	}
	msg := fmt.Sprintf("lost %q (token %d): %s", e.Key, e.Token, why)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Is matches ErrLost, and ErrClientDeadline when the client deadline passed.
func (e *LostError) Is(target error) bool {
	switch target {
	case ErrLost:
		return true
	case ErrClientDeadline:
		return e.Reason == LossUnreachable || e.Reason == LossHeartbeatStopped
	}
	return false
}

// Unwrap returns the server's reply or the last renewal failure.
func (e *LostError) Unwrap() error { return e.Err }

// ErrClientClosed is returned by acquires on a closed Client.
var ErrClientClosed = errors.New("leasehold: client closed")

// ErrAlreadyReleased is returned by a second Release of the same hold.
var ErrAlreadyReleased = errors.New("leasehold: already released")

// holdIsGone reports whether err is the cluster saying a hold no longer exists (as
// opposed to "cannot tell now").
func holdIsGone(err error) bool {
	return errors.Is(err, ErrNotOwner) || errors.Is(err, ErrLeaseNotFound) ||
		errors.Is(err, ErrNameNotFound) || errors.Is(err, ErrNotFound)
}
