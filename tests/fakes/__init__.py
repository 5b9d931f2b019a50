"""Local fakes of outside services (HTTP only on 127.0.0.1); importable without pytest."""
