# frozen_string_literal: true

module Leasehold
  # Base class of every error the gem raises. Errors from the server carry its
  # +code+ (e.g. "lock_held"), the HTTP +status+, its +message+ (which names the
  # field and the rule) and the other fields of its error object in +details+.
  # Errors made on this side (no endpoint answered, a bad argument) have a code
  # too and a +status+ of nil.
  class Error < StandardError
    attr_reader :code, :status, :details

    # +code+: the server's error code; +details+: the other fields of the error.
    def initialize(message = nil, code: nil, status: nil, details: {})
      @code = code || self.class::CODE
      @status = status
      @details = details || {}
      super(message || @code)
    end

    # The error code of this class ("error" for the base class).
    CODE = "error"

    # The error for a server reply: +status+ and the parsed +{"error": {...}}+ body
    # (nil when the body was not the server's JSON, e.g. from a proxy).
    def self.from_reply(status, body)
      fields = body.is_a?(Hash) && body[:error].is_a?(Hash) ? body[:error].dup : nil
      if fields
        code = fields.delete(:code).to_s
        message = fields.delete(:message).to_s
      else
        code = STATUS_CODES.fetch(status, "internal")
        message = "HTTP #{status}: #{body.to_s.strip[0, 200]}"
      end
      CLASSES.fetch(code, Error).new(message, code: code, status: status, details: fields || {})
    end
  end

  # 400: malformed request, bad key, ttl out of range, unknown field...; the
  # message names the field and the rule ("owner: must not be empty").
  class InvalidArgumentError < Error; CODE = "invalid_argument"; end
  # 401: auth is on and the bearer token is missing or wrong.
  class UnauthorizedError < Error; CODE = "unauthorized"; end
  # 403: the token may not touch this key prefix or lease.
  class ForbiddenError < Error; CODE = "forbidden"; end
  # 404 for an unknown route.
  class NotFoundError < Error; CODE = "not_found"; end
  # 404: the lease expired, was revoked or never existed.
  class LeaseNotFoundError < NotFoundError; CODE = "lease_not_found"; end
  # 404: the name is not registered.
  class NameNotFoundError < NotFoundError; CODE = "name_not_found"; end

  # 409 base: the key, name or slot is in someone else's hands.
  class ConflictError < Error
    # Who holds it (+{owner:, token:, expires_in_ms:}+), when the server said.
    def holder
      details[:holder]
    end
  end

  # 409: the lock is held by someone else (+holder+ names them).
  class LockHeldError < ConflictError; CODE = "lock_held"; end
  # 409: the name is registered by someone else (+holder+ names them).
  class NameTakenError < ConflictError; CODE = "name_taken"; end
  # 409: release/extend by someone who no longer holds it (lost or stolen).
  class NotOwnerError < ConflictError
    CODE = "not_owner"
    # "stolen" when an operator force-released the hold, else nil.
    def reason
      details[:reason]
    end
  end
  # 409: every slot of the semaphore is taken.
  class SemaphoreFullError < ConflictError; CODE = "semaphore_full"; end
  # 409: the semaphore is in use with another limit.
  class LimitMismatchError < ConflictError; CODE = "limit_mismatch"; end
  # 405: the route does not take that method.
  class MethodNotAllowedError < Error; CODE = "method_not_allowed"; end
  # 413: body, key or value over the limits.
  class PayloadTooLargeError < Error; CODE = "payload_too_large"; end
  # 429: over a configured quota (leases, waiters per key).
  class TooManyRequestsError < Error; CODE = "too_many_requests"; end
  # 500: the server failed.
  class InternalError < Error; CODE = "internal"; end

  # 503: no leader or quorum reachable, or (with status nil) no endpoint could be
  # reached at all. +retry_after+ is the server's hint in seconds, if any.
  class UnavailableError < Error
    CODE = "unavailable"
    # Seconds the server suggests waiting before retrying (nil if it gave none).
    def retry_after
      ms = details[:retry_after_ms]
      ms && ms / 1000.0
    end
  end

  # 504, or (with status nil) no answer before this client's deadline.
  class TimeoutError < Error; CODE = "timeout"; end

  # Raised by {Lock#acquire} and {Lock#with_lock} when the lock was not obtained
  # within the wait (Locksy's LockNotOwnedError, NoBrainer's LockUnavailable).
  # It is a {LockHeldError}: +code+ is "lock_held" and +holder+ names the holder.
  class LockNotOwnedError < LockHeldError; end

  # The hold of a lock, name or semaphore slot was lost: the cluster says it
  # ended (expired, revoked or force-released), or renewals failed until the
  # client deadline passed. Raised in the thread running {Lock#with_lock}'s
  # block (unless an +on_lost+ callback was given) and by {Lock#release} and
  # {Lock#refresh}. Locker's LockStolen, NoBrainer's LostLock.
  class LockLost < Error
    CODE = "lock_lost"

    # Why: :expired (the hold ended on the cluster), :stolen (an operator's force
    # release), :unreachable (renewals failed past the client deadline) or
    # :heartbeat_stopped (see {Lock#stop_heartbeat}).
    attr_reader :reason

    # +reason+: one of the symbols above; +details+ may name the key and token.
    def initialize(message = nil, reason: :expired, details: {})
      @reason = reason
      super(message, details: details)
    end
  end

  # Maps the server's codes to classes.
  CLASSES = [
    InvalidArgumentError, UnauthorizedError, ForbiddenError, NotFoundError,
    LeaseNotFoundError, NameNotFoundError, LockHeldError, NameTakenError,
    NotOwnerError, SemaphoreFullError, LimitMismatchError, MethodNotAllowedError,
    PayloadTooLargeError, TooManyRequestsError, InternalError, UnavailableError,
    TimeoutError
  ].to_h { |k| [k::CODE, k] }.freeze

  # Codes for replies without the server's JSON body.
  STATUS_CODES = {
    400 => "invalid_argument", 401 => "unauthorized", 403 => "forbidden",
    404 => "not_found", 405 => "method_not_allowed", 409 => "lock_held",
    413 => "payload_too_large", 429 => "too_many_requests", 503 => "unavailable",
    504 => "timeout"
  }.freeze
  private_constant :STATUS_CODES
end
