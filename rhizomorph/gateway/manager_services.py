"""The workspace manager's service methods: register, unregister, find and list services.

A mixin of ``WorkspaceManager`` (rhizomorph/gateway/manager.py); each method gets the caller's
identity first. Visibility is applied by the registry; the ``get_service`` modes that ask the
providers are decided here (rhizomorph/gateway/manager_select.py).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from rhizomorph.gateway import manager_select
from rhizomorph.protocol import rpc
from rhizomorph.protocol.handshake import Identity
from rhizomorph.protocol.service_table import RegistryError, is_probing, parse_mode, parse_service_id


class ManagerError(Exception):
    """Refused call; the message reaches the caller as a RemoteException."""


async def call_registry(ref: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    result = await ref
    if "error" in result:
        raise ManagerError(result["error"])
    return result


def _request(service_id: Any, config: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The id (a service info dict stands for its id) and the options, keyword ones included."""
    if isinstance(service_id, dict):
        service_id = service_id.get("id")
    options = dict(config) if isinstance(config, dict) else {}
    options.update(kwargs)
    return service_id, options


class ServiceMethods:
    if TYPE_CHECKING:  # provided by WorkspaceManager
        _host: Any
        _base_url: str
        address: str
        login: Any  # rhizomorph.gateway.login.LoginService | None

        def service_dict(self) -> dict[str, Any]: ...

        async def call_client(self, target: str, method: str, args: list[Any], timeout: float | None = None) -> Any: ...

    async def register_service(self, caller: Identity, service: dict[str, Any], config: Any = None, **_: Any) -> None:
        """Register a service of the calling client."""
        if not isinstance(service, dict):
            raise ManagerError("register_service needs a service info dict")
        if not caller.can(caller.workspace, "rw"):
            raise ManagerError(f"Permission denied: read-only access to workspace {caller.workspace}")
        name = str(service.get("id", "")).rsplit(":", 1)[-1]
        if name.startswith("_rintf_"):
            return None  # per-call interface services stay between the two clients, as in Hypha
        result = await call_registry(self._host.registry.register_service(caller.address, service))
        info = result["info"]
        if result["replaced"] is not None:
            self._host.broadcast_event(caller.workspace, "service_removed", result["replaced"])
        if info.get("type") == "built-in":
            self._host.broadcast_event(
                caller.workspace, "client_connected", {"id": caller.address, "workspace": caller.workspace}
            )
        else:
            self._host.broadcast_event(caller.workspace, "service_added", info)
        return None

    async def unregister_service(self, caller: Identity, service_id: str, **_: Any) -> None:
        """Unregister a service of the calling client."""
        result = await call_registry(self._host.registry.unregister_service(caller.address, service_id))
        self._host.broadcast_event(caller.workspace, "service_removed", result["info"])
        return None

    async def get_service(self, caller: Identity, service_id: Any, config: Any = None, **kwargs: Any) -> dict:
        """Get a service by id: ``name``, ``ws/name``, ``client:name`` or ``ws/client:name``."""
        service_id, config = _request(service_id, config, kwargs)
        if service_id in ("~", "default") or (isinstance(service_id, str) and service_id.endswith("/~")):
            return self.service_dict()
        case = config.get("case_conversion")
        if case is not None and case not in rpc.CASE_CONVERSIONS:
            raise ManagerError(f"case_conversion must be one of {', '.join(rpc.CASE_CONVERSIONS)}, not {case!r}")
        if self.login is not None and self.login.names(service_id, caller.workspace):
            service = self.login.service_dict(self.address)
            return rpc.convert_case(service, case) if case is not None else service
        found = await self._find(caller, service_id, config)
        owner: str = found["owner"]
        full_id: str = found["info"]["id"]
        provider_ws, provider_client = owner.split("/", 1)
        name = full_id.rsplit(":", 1)[1]
        service = await self.call_client(owner, "services.built-in.get_service", [name], timeout=config.get("timeout"))
        if not isinstance(service, dict):
            raise ManagerError(f"provider {owner} returned no service for {name}")
        service = rpc.absolutize_targets(service, provider_ws)
        if case is not None:  # on the server, as Hypha does it: the client only decodes
            service = rpc.convert_case(service, case)
        service["id"] = full_id
        service_config = dict(service.get("config") or {})
        service_config["workspace"] = provider_ws
        service_config["url"] = f"{self._base_url}/{provider_ws}/services/{provider_client}:{name}"
        service["config"] = service_config
        return service

    async def get_service_info(self, caller: Identity, service_id: Any, config: Any = None, **kwargs: Any) -> dict:
        """The registered info of a service (no call to its provider)."""
        service_id, config = _request(service_id, config, kwargs)
        if self.login is not None and self.login.names(service_id, caller.workspace):
            return self.login.info()
        return (await self._find(caller, service_id, config))["info"]

    async def _find(self, caller: Identity, service_id: Any, config: dict[str, Any]) -> dict[str, Any]:
        """Resolve a service id for the caller through the registry (visibility applied there);
        the modes that ask the providers or need this worker's view are decided here."""
        mode = config.get("mode")
        readable = list(caller.workspaces)
        if not is_probing(mode):
            return await call_registry(self._host.registry.find_service(service_id, caller.workspace, readable, mode))
        result = await call_registry(self._host.registry.find_services(service_id, caller.workspace, readable))
        try:
            selection = parse_mode(mode, parse_service_id(service_id, caller.workspace).workspace)
        except RegistryError as exc:
            raise ManagerError(str(exc)) from None
        timeout = config.get("select_timeout", 2.0)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 60:
            raise ManagerError("select_timeout must be a number of seconds in (0, 60]")

        async def call(owner: str, method: str, timeout: float) -> Any:
            return await self.call_client(owner, method, [], timeout=timeout)

        return await manager_select.select(
            result["candidates"],
            selection,
            worker_id=self._host.worker_id,
            call=call,
            timeout=float(timeout),
        )

    async def list_services(self, caller: Identity, query: Any = None, **kwargs: Any) -> list:
        """List services: of the caller's workspace, another workspace by name, a pattern, or a query dict."""
        if query is None and kwargs:
            query = {
                k: v for k, v in kwargs.items() if k in ("workspace", "client_id", "service_id", "type", "visibility")
            } or None
        result = await call_registry(
            self._host.registry.list_services(caller.workspace, list(caller.workspaces), query)
        )
        services: list[dict[str, Any]] = result["services"]
        if self.login is not None and self.login.listed(query, caller):
            services = sorted([*services, self.login.info()], key=lambda s: s["id"])
        return services
